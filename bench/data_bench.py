#!/usr/bin/env python3
"""The data-plane benchmark: cauce against DuckDB and `psql \\copy` on the same inputs, in
the same run, on the same machine. Not a test: it prints wall times, peak memory and ratios.

  T1  read the sales CSV, cast, drop cancelled orders, add total = quantity * price, write
      zstd Parquet partitioned by day        (cauce: extract -> sql -> load parquet)
  T2  join sales with products and customers, group by day and country, sum totals, one
      Parquet file                            (cauce: 3 extracts -> sql -> load parquet)
  L1  load the sales CSV into a PostgreSQL table  (cauce: extract -> load postgres)

Targets (issue 3): T1 and T2 wall-time ratio cauce/DuckDB <= 0.8; L1 rows/s >= 1.2x psql's
\\copy; T1 peak memory < 512 MiB whatever the input size.

Usage: data_bench.py CAUCE_BIN PYTHON_WITH_DUCKDB WORK_DIR [ROWS]
Environment: BENCH_PG (default postgresql://postgres@127.0.0.1:5432/test); BENCH_SKIP=L1
"""

import os
import shutil
import subprocess
import sys
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))


def timed(cmd, cwd=None, env=None):
    """Runs cmd under GNU time; returns (seconds, peak RSS MiB, stdout). The page cache's
    dirty pages are flushed first, so that no command pays for writing out another's files."""
    os.sync()
    out = subprocess.run(
        ["/usr/bin/time", "-f", "@@TIME %e %M"] + cmd,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stdout}\n{out.stderr}")
    line = [l for l in out.stderr.splitlines() if l.startswith("@@TIME")][-1]
    _, secs, kb = line.split()
    return float(secs), int(kb) / 1024.0, out.stdout


def project(work, name, pipeline):
    d = os.path.join(work, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(os.path.join(d, "pipelines"))
    with open(os.path.join(d, "cauce.yaml"), "w") as f:
        f.write(f"name: {name}\n")
    with open(os.path.join(d, "pipelines", "p.yaml"), "w") as f:
        f.write(textwrap.dedent(pipeline))
    return d


def cauce(bin_, work, name, pipeline):
    d = project(work, name, pipeline)
    secs, mib, _ = timed([bin_, "--project", d, "run", "p"], env=dict(os.environ, NO_COLOR="1"))
    return secs, mib


def duckdb(py, sql):
    code = f"import duckdb\nduckdb.sql({sql!r})\n"
    secs, mib, _ = timed([py, "-c", code])
    return secs, mib


SALES_EXTRACT = ' {{source: csv, path: {inp}/sales.csv, columns: {{price: "decimal(10,2)", created_at: timestamp}}}}'


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    bin_, py, work = sys.argv[1:4]
    rows = int(sys.argv[4]) if len(sys.argv) > 4 else 5_000_000
    skip = os.environ.get("BENCH_SKIP", "").split(",")
    pg = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
    inp = os.path.join(work, "in")
    subprocess.run([sys.executable, os.path.join(HERE, "data_gen.py"), inp, str(rows)], check=True)
    out = os.path.join(work, "out")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    size = os.path.getsize(os.path.join(inp, "sales.csv"))
    print(f"inputs: {rows:,} sales rows ({size / 2**20:.0f} MiB CSV), 20,000 products, 100,000 customers; {os.cpu_count()} cores")
    results = []

    # Physical floor: reading the CSV once from the page cache.
    floor, _, _ = timed(["cat", os.path.join(inp, "sales.csv")])
    print(f"floor: reading the sales CSV (cat): {floor:.2f}s")
    # And writing as many bytes into new files, through the page cache and around it: on a
    # virtual machine whose host takes back free memory, new page-cache pages cost several
    # times what they do once the memory was in use, and that changes from minute to minute.
    # cauce writes its datasets (about the CSV's size per task) through the page cache.
    mib = max(1, size >> 20)
    probe = os.path.join(work, "page-cache-probe")
    for label, flags in (("through the page cache", []), ("direct", ["oflag=direct"])):
        secs, _, _ = timed(["dd", "if=/dev/zero", f"of={probe}", "bs=1M", f"count={mib}", "status=none"] + flags)
        os.remove(probe)
        print(f"floor: writing {mib} MiB into a new file {label} (dd): {secs:.2f}s")

    t1 = f"""
    tasks:
      sales:
        extract:{SALES_EXTRACT.format(inp=inp)}
      clean:
        depends_on: [sales]
        sql: |
          SELECT *, quantity * price AS total, CAST(created_at AS DATE) AS day
          FROM sales WHERE status <> 'cancelled'
      warehouse:
        depends_on: [clean]
        load: {{sink: parquet, path: {out}/cauce_t1/, partition_by: [day]}}
    """
    c = cauce(bin_, work, "t1", t1)
    d = duckdb(
        py,
        f"""COPY (SELECT *, quantity * price AS total, CAST(created_at AS DATE) AS day
              FROM read_csv('{inp}/sales.csv', types={{'price': 'DECIMAL(10,2)', 'created_at': 'TIMESTAMP'}})
              WHERE status <> 'cancelled')
            TO '{out}/duckdb_t1' (FORMAT parquet, PARTITION_BY (day), COMPRESSION zstd)""",
    )
    results.append(("T1", c, d))

    t2 = f"""
    tasks:
      sales:
        extract:{SALES_EXTRACT.format(inp=inp)}
      products:
        extract: {{source: csv, path: {inp}/products.csv}}
      customers:
        extract: {{source: csv, path: {inp}/customers.csv}}
      by_day:
        depends_on: [sales, products, customers]
        sql: |
          SELECT CAST(s.created_at AS DATE) AS day, s.country, SUM(s.quantity * s.price) AS total,
                 COUNT(*) AS orders, COUNT(DISTINCT c.segment) AS segments, SUM(p.cost * s.quantity) AS cost
          FROM sales s JOIN products p ON s.sku = p.sku
                       JOIN customers c ON s.customer_email = c.customer_email
          GROUP BY 1, 2
      report:
        depends_on: [by_day]
        load: {{sink: parquet, path: {out}/cauce_t2.parquet}}
    """
    c = cauce(bin_, work, "t2", t2)
    d = duckdb(
        py,
        f"""COPY (SELECT CAST(s.created_at AS DATE) AS day, s.country, SUM(s.quantity * s.price) AS total,
                     COUNT(*) AS orders, COUNT(DISTINCT c.segment) AS segments, SUM(p.cost * s.quantity) AS cost
              FROM read_csv('{inp}/sales.csv', types={{'price': 'DECIMAL(10,2)', 'created_at': 'TIMESTAMP'}}) s
              JOIN read_csv('{inp}/products.csv') p ON s.sku = p.sku
              JOIN read_csv('{inp}/customers.csv') c ON s.customer_email = c.customer_email
              GROUP BY 1, 2)
            TO '{out}/duckdb_t2.parquet' (FORMAT parquet, COMPRESSION zstd)""",
    )
    results.append(("T2", c, d))

    if "L1" not in skip:
        l1 = f"""
        tasks:
          sales:
            extract:{SALES_EXTRACT.format(inp=inp)}
          load:
            depends_on: [sales]
            load: {{sink: postgres, url: "{pg}", table: bench_l1_cauce, mode: replace}}
        """
        # Both loads start from no table (cauce creates its own, inside its timing) and
        # right after a checkpoint, so that neither pays for flushing the other's writes.
        subprocess.run(["psql", pg, "-q", "-c", "DROP TABLE IF EXISTS bench_l1_cauce", "-c", "CHECKPOINT"], check=True)
        c = cauce(bin_, work, "l1", l1)
        ddl = (
            "DROP TABLE IF EXISTS bench_l1_psql; CREATE TABLE bench_l1_psql (order_id bigint, "
            "created_at timestamp, customer_email text, sku text, quantity bigint, "
            "price numeric(10,2), country text, status text)"
        )
        subprocess.run(["psql", pg, "-q", "-c", ddl, "-c", "CHECKPOINT"], check=True)
        d = timed(["psql", pg, "-q", "-c", f"\\copy bench_l1_psql FROM '{inp}/sales.csv' CSV HEADER"])[:2]
        results.append(("L1", c, d))

    print()
    print(f"{'task':<5} {'cauce s':>8} {'peer s':>8} {'ratio':>7} {'cauce MiB':>10} {'peer MiB':>9}  peer, target")
    for name, (cs, cm), (ds, dm) in results:
        peer = "psql \\copy" if name == "L1" else "DuckDB"
        if name == "L1":
            ratio = ds / cs  # rows/s of cauce over rows/s of psql
            target = "rows/s ratio >= 1.2"
        else:
            ratio = cs / ds
            target = "wall ratio <= 0.8" + ("; cauce < 512 MiB" if name == "T1" else "")
        print(f"{name:<5} {cs:>8.2f} {ds:>8.2f} {ratio:>7.2f} {cm:>10.0f} {dm:>9.0f}  {peer}, {target}")


if __name__ == "__main__":
    main()
