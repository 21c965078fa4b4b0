//! The database sources and sinks through the real binary against the PostgreSQL
//! (127.0.0.1:5432, user postgres, database `test`) and MariaDB (127.0.0.1:3306, root,
//! database `test`) servers of the machine, and SQLite files: types read back from Parquet
//! with pyarrow, template values that stay literals, append/replace/upsert loads, loads that
//! fail and leave the table as it was, tables created with the right column types,
//! incremental extracts filtered at the origin, streaming with bounded memory, and errors
//! that are retried (or not) and never show a password. Every table has a unique name and is
//! dropped at the end, so these tests run in parallel with each other and everything else.

use crate::common::{latest_run, py, Project};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub(crate) const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const MY_URL: &str = "mysql://root@127.0.0.1:3306/test";

/// A table name no other test (or test process) uses.
pub(crate) fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "cauce_{tag}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs SQL with psql; returns its unaligned output (`|` between columns).
pub(crate) fn psql(sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql failed: {}\n{sql}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs SQL with the mariadb client; returns its tab-separated output.
fn mariadb(sql: &str) -> String {
    let out = Command::new("mariadb")
        .args([
            "-h",
            "127.0.0.1",
            "-u",
            "root",
            "test",
            "-N",
            "-B",
            "-e",
            sql,
        ])
        .output()
        .expect("mariadb runs");
    assert!(
        out.status.success(),
        "mariadb failed: {}\n{sql}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Drops a PostgreSQL table when the test ends, passed or not.
struct PgTable(String);

impl Drop for PgTable {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "test",
                "-q",
                "-c",
            ])
            .arg(format!("DROP TABLE IF EXISTS \"{}\"", self.0))
            .output();
    }
}

/// Drops a MariaDB table when the test ends.
struct MyTable(String);

impl Drop for MyTable {
    fn drop(&mut self) {
        let _ = Command::new("mariadb")
            .args(["-h", "127.0.0.1", "-u", "root", "test", "-e"])
            .arg(format!("DROP TABLE IF EXISTS `{}`", self.0))
            .output();
    }
}

/// A task of a run's status.
fn task(p: &Project, run: &str, id: &str) -> serde_json::Value {
    let s = p.status(run);
    s["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task_id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no task {id} in {s}"))
}

fn run_ok(p: &Project, args: &[&str]) -> String {
    let r = p.run(args);
    assert_ne!(r.code, 2, "{}{}", r.stdout, r.stderr);
    let id = latest_run(p);
    assert_eq!(r.code, 0, "{}{}\n{}", r.stdout, r.stderr, p.status(&id));
    id
}

#[test]
fn postgres_source_over_tls_keeps_types_in_parquet() {
    let t = unique("types");
    let _drop = PgTable(t.clone());
    psql(&format!(
        "CREATE TABLE {t} (id int, amount numeric(10,2), name text, paid bool, day date, \
         created timestamp, seen timestamptz, big bigint, ratio float8, tags jsonb, ref uuid, \
         raw bytea, total numeric, code varchar(5));
         INSERT INTO {t} VALUES
         (1, 10.50, 'José Muñoz', true, '2024-01-05', '2024-01-05 10:30:00.123456',
          '2024-01-05 10:30:00+02', 9007199254740993, 0.25, '{{\"a\": [1, 2]}}',
          'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\xdeadbeef', 1/3::numeric, 'ñ'),
         (2, -0.01, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);"
    ));
    let p = Project::new();
    p.pipeline(
        "pg",
        &format!(
            r#"
tasks:
  orders:
    extract:
      source: postgres
      url: "{PG_URL}?sslmode=require"
      query: |
        SELECT t.*, (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()) AS tls
        FROM {t} AS t ORDER BY id;
  save:
    depends_on: [orders]
    load: {{sink: parquet, path: out/orders.parquet}}
"#
        ),
    );
    let run = run_ok(&p, &["run", "pg"]);
    assert_eq!(task(&p, &run, "orders")["metrics"]["rows_out"], 2);
    let out = py(
        p.path(),
        r#"
import pyarrow.parquet as pq
t = pq.read_table('out/orders.parquet')
for f in t.schema:
    print(f.name, f.type)
for r in t.to_pylist():
    print(repr(r))
"#,
    );
    for line in [
        "id int32",
        "amount decimal128(10, 2)",
        "name string",
        "paid bool",
        "day date32[day]",
        "created timestamp[us]",
        "seen timestamp[us, tz=UTC]",
        "big int64",
        "ratio double",
        "tags string",
        "ref string",
        "raw binary",
        "total decimal128(38, 10)",
        "code string",
        "tls bool",
    ] {
        assert!(out.lines().any(|l| l == line), "missing `{line}` in\n{out}");
    }
    for value in [
        "'amount': Decimal('10.50')",
        "'name': 'José Muñoz'",
        "'paid': True",
        "'day': datetime.date(2024, 1, 5)",
        "'created': datetime.datetime(2024, 1, 5, 10, 30, 0, 123456)",
        // 10:30 at +02 is 08:30 UTC.
        "'seen': datetime.datetime(2024, 1, 5, 8, 30, tzinfo=",
        "'big': 9007199254740993",
        "'tags': '{\"a\": [1, 2]}'",
        "'ref': 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
        "'raw': b'\\xde\\xad\\xbe\\xef'",
        "'total': Decimal('0.3333333333')",
        "'code': 'ñ'",
        "'tls': True",
        "'amount': Decimal('-0.01'), 'name': None, 'paid': None, 'day': None, 'created': None, 'seen': None",
    ] {
        assert!(out.contains(value), "missing `{value}` in\n{out}");
    }
}

#[test]
fn postgres_params_are_literals_not_sql() {
    let t = unique("params");
    let _drop = PgTable(t.clone());
    let evil = format!("ES'; DROP TABLE {t}; --");
    psql(&format!(
        "CREATE TABLE {t} (id int, country text);
         INSERT INTO {t} VALUES (1, 'ES'), (2, 'FR'), (3, '{}');",
        evil.replace('\'', "''")
    ));
    let p = Project::new();
    p.pipeline(
        "by_country",
        &format!(
            r#"
params:
  country: ES
tasks:
  orders:
    extract:
      source: postgres
      url: {PG_URL}
      query: SELECT id, country FROM {t} WHERE country = {{{{ params.country }}}} ORDER BY id
  save:
    depends_on: [orders]
    load: {{sink: parquet, path: out/orders.parquet}}
"#
        ),
    );
    let run = run_ok(&p, &["run", "by_country", "-p", &format!("country={evil}")]);
    // The filter compared with the whole value: only the row holding it matched.
    assert_eq!(task(&p, &run, "orders")["metrics"]["rows_out"], 1);
    let out = py(
        p.path(),
        "import pyarrow.parquet as pq\nprint(pq.read_table('out/orders.parquet').to_pylist())",
    );
    assert!(
        out.contains(&format!("[{{'id': 3, 'country': {evil:?}}}]")),
        "{out}"
    );
    // And the table is still there, whole.
    assert_eq!(psql(&format!("SELECT count(*) FROM {t}")), "3");
    // The default value works as a plain filter.
    let run = run_ok(&p, &["run", "by_country"]);
    assert_eq!(task(&p, &run, "orders")["metrics"]["rows_out"], 1);
}

fn load_pipeline(table: &str, mode: &str, keys: &str) -> String {
    format!(
        r#"
tasks:
  raw:
    extract:
      source: csv
      path: data/orders.csv
      columns: {{amount: "decimal(10,2)"}}
  load:
    depends_on: [raw]
    load:
      sink: postgres
      url: {PG_URL}
      table: {table}
      mode: {mode}
{keys}
"#
    )
}

#[test]
fn postgres_sink_appends_and_replaces() {
    let t = unique("append");
    let _drop = PgTable(t.clone());
    let p = Project::new();
    p.write(
        "data/orders.csv",
        "id,name,amount\n1,a,1.50\n2,b,2.50\n3,c,3.50\n",
    );
    p.pipeline("load", &load_pipeline(&t, "append", ""));
    let run = run_ok(&p, &["run", "load"]);
    assert_eq!(task(&p, &run, "load")["metrics"]["rows_out"], 3);
    run_ok(&p, &["run", "load"]);
    assert_eq!(
        psql(&format!("SELECT count(*), sum(amount) FROM {t}")),
        "6|15.00"
    );
    // Replace: exactly the new rows.
    p.write("data/orders.csv", "id,name,amount\n7,x,7.25\n8,y,8.25\n");
    p.pipeline("load", &load_pipeline(&t, "replace", ""));
    run_ok(&p, &["run", "load"]);
    assert_eq!(
        psql(&format!("SELECT id, name, amount FROM {t} ORDER BY id")),
        "7|x|7.25\n8|y|8.25"
    );
}

#[test]
fn postgres_upsert_updates_adds_and_never_duplicates_keys() {
    let t = unique("upsert");
    let _drop = PgTable(t.clone());
    let p = Project::new();
    p.write("data/orders.csv", "id,name,amount\n1,a,1.00\n2,b,2.00\n");
    p.pipeline("up", &load_pipeline(&t, "upsert", "      keys: [id]"));
    run_ok(&p, &["run", "up"]);
    // The created table has its primary key on the keys.
    assert_eq!(
        psql(&format!(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid \
             AND a.attnum = ANY(i.indkey) WHERE i.indrelid = '{t}'::regclass AND i.indisprimary"
        )),
        "id"
    );
    // A changed row, a new one, and a key given twice (its last row wins).
    p.write(
        "data/orders.csv",
        "id,name,amount\n2,B,20.00\n3,c,3.00\n3,c2,30.00\n",
    );
    run_ok(&p, &["run", "up"]);
    run_ok(&p, &["run", "up"]);
    assert_eq!(
        psql(&format!("SELECT id, name, amount FROM {t} ORDER BY id")),
        "1|a|1.00\n2|B|20.00\n3|c2|30.00"
    );
    assert_eq!(
        psql(&format!("SELECT count(*) = count(DISTINCT id) FROM {t}")),
        "t"
    );
    // Upsert into a table without a unique key on `keys` is refused before writing.
    let plain = unique("nokey");
    let _drop2 = PgTable(plain.clone());
    psql(&format!(
        "CREATE TABLE {plain} (id bigint, name text, amount numeric(10,2)); INSERT INTO {plain} VALUES (1, 'old', 1)"
    ));
    p.pipeline("up2", &load_pipeline(&plain, "upsert", "      keys: [id]"));
    let r = p.run(&["run", "up2"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let err = task(&p, &latest_run(&p), "load")["error"].to_string();
    assert!(err.contains("primary key or unique index on (id)"), "{err}");
    assert_eq!(psql(&format!("SELECT count(*) FROM {plain}")), "1");
}

#[test]
fn a_failed_load_leaves_the_table_as_it_was() {
    let t = unique("atomic");
    let _drop = PgTable(t.clone());
    psql(&format!(
        "CREATE TABLE {t} (id bigint PRIMARY KEY, name text NOT NULL);
         INSERT INTO {t} VALUES (1, 'keep'), (2, 'keep too');"
    ));
    let p = Project::new();
    // 3,000 good rows, then one whose name is empty (NULL), then more: the load fails
    // midway, after the old rows were deleted and thousands of new ones copied.
    let mut csv = String::from("id,name\n");
    for i in 10..3010 {
        csv.push_str(&format!("{i},n{i}\n"));
    }
    csv.push_str("5000,\n5001,z\n");
    p.write("data/people.csv", &csv);
    let pipeline = |extra_column: bool| {
        format!(
            r#"
tasks:
  raw:
    extract: {{source: csv, path: data/people.csv}}
  {step}
  load:
    depends_on: [{from}]
    load: {{sink: postgres, url: {PG_URL}, table: {t}, mode: replace, from: {from}}}
"#,
            step = if extra_column {
                "wide:\n    depends_on: [raw]\n    sql: SELECT id, name, 1 AS extra FROM raw"
            } else {
                ""
            },
            from = if extra_column { "wide" } else { "raw" },
        )
    };
    p.pipeline("replace", &pipeline(false));
    let r = p.run(&["run", "replace"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let load = task(&p, &latest_run(&p), "load");
    assert_eq!(load["state"], "failed", "{load}");
    let err = load["error"].as_str().unwrap();
    assert!(
        err.contains("\"name\"") && err.contains("not-null"),
        "{err}"
    );
    assert!(err.contains(&format!("COPY {t}, line ")), "{err}");
    // A constraint violation is not retried.
    assert_eq!(load["attempts"], 1, "{load}");
    assert_eq!(
        psql(&format!("SELECT id, name FROM {t} ORDER BY id")),
        "1|keep\n2|keep too"
    );
    // A column the table lacks is refused before any row is written.
    p.pipeline("replace", &pipeline(true));
    let r = p.run(&["run", "replace"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let err = task(&p, &latest_run(&p), "load")["error"].to_string();
    assert!(
        err.contains(&format!("column `extra` is not in table {t}")),
        "{err}"
    );
    assert_eq!(psql(&format!("SELECT count(*) FROM {t}")), "2");
}

#[test]
fn the_sink_creates_tables_with_numeric_and_timestamp_columns() {
    let t = unique("created");
    let _drop = PgTable(t.clone());
    let p = Project::new();
    p.write(
        "data/sales.csv",
        "id,price,created_at,note\n1,10.50,2024-01-05 10:00:00,ok\n2,0.99,2024-01-06 23:59:59.5,\n",
    );
    p.pipeline(
        "create",
        &format!(
            r#"
tasks:
  raw:
    extract:
      source: csv
      path: data/sales.csv
      columns: {{price: "decimal(10,2)", created_at: timestamp}}
  load:
    depends_on: [raw]
    load: {{sink: postgres, url: {PG_URL}, table: public.{t}}}
"#
        ),
    );
    run_ok(&p, &["run", "create"]);
    assert_eq!(
        psql(&format!(
            "SELECT column_name, data_type, numeric_precision, numeric_scale FROM information_schema.columns \
             WHERE table_name = '{t}' ORDER BY ordinal_position"
        )),
        "id|bigint|64|0\nprice|numeric|10|2\ncreated_at|timestamp without time zone||\nnote|text||"
    );
    assert_eq!(
        psql(&format!(
            "SELECT price, created_at, note IS NULL FROM {t} ORDER BY id"
        )),
        "10.50|2024-01-05 10:00:00|f\n0.99|2024-01-06 23:59:59.5|t"
    );
}

#[test]
fn mysql_source_reads_magento_types_and_keeps_params_literal() {
    let t = unique("magento");
    let _drop = MyTable(t.clone());
    // A backslash before the quote: with MySQL's default escaping this value, rendered as a
    // literal, would close the string early and turn the rest into SQL.
    let evil = "x\\' OR 1=1 -- ";
    mariadb(&format!(
        "CREATE TABLE {t} (entity_id INT UNSIGNED PRIMARY KEY, sku VARCHAR(64), price DECIMAL(12,4), \
         qty SMALLINT, is_active TINYINT(1), weight FLOAT, rate DOUBLE, created_at DATETIME(6), \
         updated_at TIMESTAMP NULL, ship_date DATE, description TEXT, options JSON, image BLOB, \
         views BIGINT UNSIGNED) DEFAULT CHARSET = utf8mb4;
         INSERT INTO {t} VALUES
         (1, 'CAFÉ-1', 12.3450, 3, 1, 1.5, 0.125, '2024-01-05 10:30:00.250000', '2024-01-05 10:30:00',
          '2024-01-06', 'Café de Colombia — 500 g', '{{\"size\": \"L\"}}', x'89504e47', 18446744073709551615),
         (2, NULL, NULL, NULL, 0, NULL, NULL, '0000-00-00 00:00:00', NULL, NULL, NULL, NULL, NULL, NULL),
         (3, '{}', 1, 1, 1, 1, 1, NULL, NULL, NULL, NULL, NULL, NULL, 1);",
        evil.replace('\\', "\\\\").replace('\'', "\\'")
    ));
    assert_eq!(mariadb(&format!("SELECT count(*) FROM {t}")), "3");
    let p = Project::new();
    p.pipeline(
        "shop",
        &format!(
            r#"
params:
  sku: "CAFÉ-1"
tasks:
  products:
    extract: {{source: mysql, url: "{MY_URL}", table: {t}}}
  chosen:
    extract:
      source: mysql
      url: {MY_URL}
      query: SELECT entity_id, sku, price * qty AS total FROM {t} WHERE sku = {{{{ params.sku }}}}
  save:
    depends_on: [products]
    load: {{sink: parquet, path: out/products.parquet}}
  save_chosen:
    depends_on: [chosen]
    load: {{sink: parquet, path: out/chosen.parquet}}
"#
        ),
    );
    let run = run_ok(&p, &["run", "shop"]);
    assert_eq!(task(&p, &run, "products")["metrics"]["rows_out"], 3);
    let out = py(
        p.path(),
        r#"
import pyarrow.parquet as pq
t = pq.read_table('out/products.parquet')
for f in t.schema:
    print(f.name, f.type)
for r in t.to_pylist():
    print(repr(r))
c = pq.read_table('out/chosen.parquet')
print('chosen', c.schema.field('total').type, c.to_pylist())
"#,
    );
    for line in [
        "entity_id int64",
        "sku string",
        "price decimal128(12, 4)",
        "qty int16",
        "is_active bool",
        "weight float",
        "rate double",
        "created_at timestamp[us]",
        "updated_at timestamp[us, tz=UTC]",
        "ship_date date32[day]",
        "description string",
        "options string",
        "image binary",
        "views decimal128(20, 0)",
    ] {
        assert!(out.lines().any(|l| l == line), "missing `{line}` in\n{out}");
    }
    for value in [
        "'sku': 'CAFÉ-1', 'price': Decimal('12.3450'), 'qty': 3, 'is_active': True",
        "'created_at': datetime.datetime(2024, 1, 5, 10, 30, 0, 250000)",
        "'updated_at': datetime.datetime(2024, 1, 5, 10, 30, tzinfo=",
        "'ship_date': datetime.date(2024, 1, 6)",
        "'description': 'Café de Colombia — 500 g'",
        "'image': b'\\x89PNG'",
        "'views': Decimal('18446744073709551615')",
        // The zero date is NULL.
        "'entity_id': 2, 'sku': None, 'price': None, 'qty': None, 'is_active': False, 'weight': None, 'rate': None, 'created_at': None",
    ] {
        assert!(out.contains(value), "missing `{value}` in\n{out}");
    }
    assert!(
        out.contains("chosen decimal128(38, 4) [{'entity_id': 1, 'sku': 'CAFÉ-1', 'total': Decimal('37.0350')}]"),
        "{out}"
    );
    // The value with a backslash and a quote is compared as it is: one row, not all.
    let run = run_ok(&p, &["run", "shop", "-p", &format!("sku={evil}")]);
    assert_eq!(task(&p, &run, "chosen")["metrics"]["rows_out"], 1);
    let out = py(
        p.path(),
        "import pyarrow.parquet as pq\nprint(pq.read_table('out/chosen.parquet').column('entity_id').to_pylist())",
    );
    assert_eq!(out.trim(), "[3]");
}

#[test]
fn csv_into_mysql_with_upsert() {
    let t = unique("myup");
    let _drop = MyTable(t.clone());
    let p = Project::new();
    p.write(
        "data/stock.csv",
        "sku,qty,price,seen\nA,1,1.10,2024-01-05 10:00:00\nB,2,2.20,2024-01-05 11:00:00\n",
    );
    p.pipeline(
        "stock",
        &format!(
            r#"
tasks:
  raw:
    extract:
      source: csv
      path: data/stock.csv
      columns: {{price: "decimal(8,2)", seen: timestamp}}
  load:
    depends_on: [raw]
    load: {{sink: mysql, url: "{MY_URL}", table: {t}, mode: upsert, keys: [sku]}}
"#
        ),
    );
    run_ok(&p, &["run", "stock"]);
    assert_eq!(
        mariadb(&format!(
            "SELECT COLUMN_NAME, COLUMN_TYPE, COLUMN_KEY FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '{t}' ORDER BY ORDINAL_POSITION"
        )),
        "sku\tvarchar(255)\tPRI\nqty\tbigint(20)\t\nprice\tdecimal(8,2)\t\nseen\tdatetime(6)"
    );
    p.write(
        "data/stock.csv",
        "sku,qty,price,seen\nB,20,22.20,2024-01-06 11:00:00\nC,3,3.30,2024-01-06 12:00:00\nC,4,4.40,2024-01-06 13:00:00\n",
    );
    run_ok(&p, &["run", "stock"]);
    run_ok(&p, &["run", "stock"]);
    assert_eq!(
        mariadb(&format!("SELECT sku, qty, price, seen FROM {t} ORDER BY sku")),
        "A\t1\t1.10\t2024-01-05 10:00:00.000000\nB\t20\t22.20\t2024-01-06 11:00:00.000000\nC\t4\t4.40\t2024-01-06 13:00:00.000000"
    );
    // A value too long for its column fails the load whole (strict session).
    mariadb(&format!("ALTER TABLE {t} MODIFY sku VARCHAR(3)"));
    p.write(
        "data/stock.csv",
        "sku,qty,price,seen\nD,1,1,2024-01-07 00:00:00\nTOOLONG,1,1,2024-01-07 00:00:00\n",
    );
    let r = p.run(&["run", "stock"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let err = task(&p, &latest_run(&p), "load")["error"].to_string();
    assert!(err.contains("sku") && err.contains("rows 1 to 2"), "{err}");
    assert_eq!(mariadb(&format!("SELECT count(*) FROM {t}")), "3");
}

#[test]
fn sqlite_source_reads_declared_types_and_never_writes() {
    let p = Project::new();
    py(
        p.path(),
        r#"
import sqlite3
c = sqlite3.connect('shop.db')
c.executescript('''
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, total DECIMAL(10,2), paid BOOLEAN,
                     day DATE, created DATETIME, receipt BLOB, weight REAL);
INSERT INTO orders VALUES (1, 'Iñaki', 10.5, 1, '2024-01-05', '2024-01-05 10:30:00', x'cafe', 1.25);
INSERT INTO orders VALUES (2, NULL, 3, 0, NULL, 1704448800, NULL, NULL);
''')
c.commit()
"#,
    );
    p.pipeline(
        "lite",
        r#"
tasks:
  orders:
    extract:
      source: sqlite
      path: shop.db
      query: SELECT o.*, id * 10 AS points, customer || '!' AS shout FROM orders o ORDER BY id
  save:
    depends_on: [orders]
    load: {sink: parquet, path: out/orders.parquet}
"#,
    );
    run_ok(&p, &["run", "lite"]);
    let out = py(
        p.path(),
        r#"
import pyarrow.parquet as pq
t = pq.read_table('out/orders.parquet')
print([(f.name, str(f.type)) for f in t.schema])
for r in t.to_pylist():
    print(repr(r))
"#,
    );
    assert!(
        out.contains("[('id', 'int64'), ('customer', 'string'), ('total', 'decimal128(10, 2)'), ('paid', 'bool'), ('day', 'date32[day]'), ('created', 'timestamp[us]'), ('receipt', 'binary'), ('weight', 'double'), ('points', 'int64'), ('shout', 'string')]"),
        "{out}"
    );
    assert!(out.contains("'customer': 'Iñaki', 'total': Decimal('10.50'), 'paid': True, 'day': datetime.date(2024, 1, 5), 'created': datetime.datetime(2024, 1, 5, 10, 30), 'receipt': b'\\xca\\xfe', 'weight': 1.25, 'points': 10, 'shout': 'Iñaki!'"), "{out}");
    // Integer Unix seconds in a DATETIME column are read as a time.
    assert!(out.contains("'total': Decimal('3.00'), 'paid': False, 'day': None, 'created': datetime.datetime(2024, 1, 5, 10, 0)"), "{out}");
    // The file is opened read-only: a statement that writes fails, and the rows stay.
    p.pipeline(
        "write",
        "tasks:\n  x:\n    extract: {source: sqlite, path: shop.db, query: \"DELETE FROM orders RETURNING id\"}\n",
    );
    let r = p.run(&["run", "write"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let err = task(&p, &latest_run(&p), "x")["error"].to_string();
    assert!(
        err.contains("readonly") || err.contains("read-only"),
        "{err}"
    );
    let left = py(
        p.path(),
        "import sqlite3\nprint(sqlite3.connect('shop.db').execute('select count(*) from orders').fetchone()[0])",
    );
    assert_eq!(left.trim(), "2");
}

/// First run reads every row, the next only new ones (filtered in the query, at the
/// origin); a run that fails after the extract leaves the cursor where it was.
fn incremental_extract(cursor_type: &str, values: [&str; 5]) {
    let t = unique("incr");
    let _drop = PgTable(t.clone());
    psql(&format!(
        "CREATE TABLE {t} (id int, updated_at {cursor_type});
         INSERT INTO {t} VALUES (1, {}), (2, {}), (3, {});",
        values[0], values[1], values[2]
    ));
    let p = Project::new();
    p.pipeline(
        "changes",
        &format!(
            r#"
tasks:
  changed:
    extract:
      source: postgres
      url: {PG_URL}
      query: >
        SELECT id, updated_at FROM {t}
        {{% if watermark %}}WHERE updated_at > {{{{ watermark }}}}{{% endif %}}
        ORDER BY id
      incremental: {{cursor: updated_at}}
  publish:
    depends_on: [changed]
    run: test ! -e fail.flag
"#
        ),
    );
    let read = |run: &str| {
        let m = task(&p, run, "changed")["metrics"].clone();
        (
            m["rows_out"].as_u64().unwrap(),
            m["bytes_read"].as_u64().unwrap(),
        )
    };
    let run = run_ok(&p, &["run", "changes"]);
    assert_eq!(read(&run).0, 3);
    psql(&format!(
        "INSERT INTO {t} VALUES (4, {}), (5, {})",
        values[3], values[4]
    ));
    // The run fails after the extract: the cursor must not move.
    p.write("fail.flag", "");
    let r = p.run(&["run", "changes"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert_eq!(read(&latest_run(&p)).0, 2);
    std::fs::remove_file(p.path().join("fail.flag")).unwrap();
    let run = run_ok(&p, &["run", "changes"]);
    assert_eq!(read(&run).0, 2, "the failed run moved the cursor");
    // Nothing new: the query itself returns no rows (nothing was read from the server).
    let run = run_ok(&p, &["run", "changes"]);
    assert_eq!(read(&run), (0, 0));
}

#[test]
fn incremental_postgres_extract_with_an_integer_cursor() {
    incremental_extract("bigint", ["100", "200", "300", "400", "500"]);
}

#[test]
fn incremental_postgres_extract_with_a_timestamp_cursor() {
    incremental_extract(
        "timestamp",
        [
            "'2024-01-05 10:00:00'",
            "'2024-01-05 11:00:00.5'",
            "'2024-01-05 12:00:00'",
            "'2024-01-06 09:00:00'",
            "'2024-01-06 10:00:00'",
        ],
    );
}

/// The peak resident memory of a process, sampled until it exits (`VmHWM` is the peak, so
/// the last sample before exit is the run's peak).
fn run_measuring_peak(p: &Project, args: &[&str]) -> (i32, u64) {
    let mut child = p.spawn(args);
    let pid = child.id();
    let mut peak_kb = 0u64;
    let start = Instant::now();
    loop {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(kb) = status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
            {
                peak_kb = peak_kb.max(kb);
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code().unwrap_or(-1), peak_kb);
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the run did not end"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_large_postgres_query_streams_in_bounded_memory() {
    let p = Project::new();
    // 300,000 rows of about 1.6 kB: some 490 MB flow from the server into the dataset.
    p.pipeline(
        "big",
        &format!(
            r#"
tasks:
  rows:
    extract:
      source: postgres
      url: {PG_URL}
      query: SELECT g AS id, repeat(md5(g::text), 50) AS payload FROM generate_series(1, 300000) AS g
"#
        ),
    );
    let (code, peak_kb) = run_measuring_peak(&p, &["run", "big", "-q"]);
    assert_eq!(code, 0);
    let rows = task(&p, &latest_run(&p), "rows");
    assert_eq!(rows["metrics"]["rows_out"], 300_000, "{rows}");
    let read = rows["metrics"]["bytes_read"].as_u64().unwrap();
    assert!(read > 480_000_000, "{rows}");
    // Well under the data that went through (a reader that kept it all would need more
    // than all of it; what remains grows slowly with the dataset writer, not the reader).
    assert!(
        peak_kb * 1024 < read * 2 / 3,
        "peak {peak_kb} kB for {read} bytes read"
    );
    eprintln!("300,000 rows, {read} bytes read, peak RSS {peak_kb} kB");
}

#[test]
fn database_errors_are_retried_or_not_and_never_show_the_password() {
    let p = Project::new();
    p.write(".env", "CAUCE_DB_TEST_PASSWORD=pw-9f3k2-secret\n");
    p.pipeline(
        "down",
        r#"
tasks:
  read:
    retries: 1
    retry_delay: 10ms
    extract:
      source: postgres
      url: postgres://etl:${CAUCE_DB_TEST_PASSWORD}@127.0.0.1:1/test
      query: SELECT 1 AS one
"#,
    );
    let r = p.run(&["run", "down"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let run = latest_run(&p);
    let read = task(&p, &run, "read");
    // Connection refused may pass: it was retried.
    assert_eq!(read["attempts"], 2, "{read}");
    let err = read["error"].as_str().unwrap();
    assert!(
        err.contains("127.0.0.1:1/test") && err.contains("refused"),
        "{err}"
    );
    let logs = p.run(&["logs", &run, "read"]);
    let everything = format!("{}{}{}{}", r.stdout, r.stderr, p.status(&run), logs.stdout);
    assert!(!everything.contains("pw-9f3k2-secret"), "{everything}");
    // A type cauce does not read is not retried, and the error says how to fix it.
    p.pipeline(
        "interval",
        &format!(
            "tasks:\n  read:\n    retries: 2\n    retry_delay: 10ms\n    extract:\n      source: postgres\n      url: {PG_URL}\n      query: SELECT 1 AS id, interval '1 day' AS wait\n"
        ),
    );
    let r = p.run(&["run", "interval"]);
    assert_eq!(r.code, 1);
    let read = task(&p, &latest_run(&p), "read");
    assert_eq!(read["attempts"], 1, "{read}");
    let err = read["error"].as_str().unwrap();
    assert!(
        err.contains("column `wait`") && err.contains("interval") && err.contains("::text"),
        "{err}"
    );
}

#[test]
fn database_specs_are_checked_before_running() {
    let p = Project::new();
    p.pipeline(
        "bad",
        &format!(
            r#"
tasks:
  both:
    extract: {{source: postgres, url: "{PG_URL}", query: SELECT 1, table: t}}
  typo:
    extract: {{source: mysql, url: "{MY_URL}", quer: SELECT 1}}
  nokeys:
    depends_on: [both]
    load: {{sink: postgres, url: "{PG_URL}", table: t, mode: upsert}}
  badname:
    depends_on: [both]
    load: {{sink: mysql, url: "{MY_URL}", table: a.b.c}}
  nofile:
    extract: {{source: sqlite, path: missing.db, table: t}}
"#
        ),
    );
    let r = p.run(&["validate", "bad"]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    let all = format!("{}{}", r.stdout, r.stderr);
    for needle in [
        "give either `query` or `table`",
        "quer",
        "`mode: upsert` needs `keys`",
        "invalid table name `a.b.c`",
        "missing.db",
        "bad.yaml:4:",
    ] {
        assert!(all.contains(needle), "missing `{needle}` in\n{all}");
    }
}

/// Waits until no backend runs a query containing `marker`; false after `limit`.
fn server_idle(marker: &str, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        let n = psql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%{marker}%' AND pid <> pg_backend_pid()"
        ));
        if n == "0" {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn a_timed_out_extract_stops_promptly_and_ends_its_query_on_the_server() {
    let marker = unique("sleepy");
    let p = Project::new();
    p.pipeline(
        "slow",
        &format!(
            r#"
tasks:
  slow:
    timeout: 1s
    extract:
      source: postgres
      url: {PG_URL}
      query: SELECT 1 AS one, '{marker}' AS marker FROM pg_sleep(30)
"#
        ),
    );
    let start = Instant::now();
    let r = p.run(&["run", "slow"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    let slow = task(&p, &latest_run(&p), "slow");
    assert!(
        slow["error"].to_string().contains("timed out")
            || slow["error"].to_string().contains("timeout"),
        "{slow}"
    );
    // The reader asked the server to cancel: the 30 s query is not left running.
    assert!(
        server_idle(&marker, Duration::from_secs(5)),
        "the query still runs"
    );
}

#[test]
fn a_load_cancelled_midway_leaves_the_table_as_it_was() {
    let t = unique("midway");
    let _drop = PgTable(t.clone());
    // Each row takes 2 ms to insert: 5,000 rows take 10 s, the load's timeout is 2 s.
    psql(&format!(
        "CREATE TABLE {t} (id bigint, name text);
         INSERT INTO {t} VALUES (1, 'old'), (2, 'old too');
         CREATE FUNCTION {t}_slow() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN PERFORM pg_sleep(0.002); RETURN NEW; END $$;
         CREATE TRIGGER slow BEFORE INSERT ON {t} FOR EACH ROW EXECUTE FUNCTION {t}_slow();"
    ));
    let p = Project::new();
    let mut csv = String::from("id,name\n");
    for i in 0..5000 {
        csv.push_str(&format!("{i},new {i}\n"));
    }
    p.write("data/rows.csv", &csv);
    p.pipeline(
        "midway",
        &format!(
            r#"
tasks:
  raw:
    extract: {{source: csv, path: data/rows.csv}}
  load:
    depends_on: [raw]
    timeout: 2s
    load: {{sink: postgres, url: {PG_URL}, table: {t}, mode: replace}}
"#
        ),
    );
    let start = Instant::now();
    let r = p.run(&["run", "midway"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        start.elapsed() < Duration::from_secs(9),
        "{:?}",
        start.elapsed()
    );
    let load = task(&p, &latest_run(&p), "load");
    assert_eq!(load["state"], "failed", "{load}");
    // The old rows were deleted and new ones inserted inside the transaction; it was
    // rolled back, so readers see exactly the old rows.
    assert!(server_idle(
        &format!("COPY \"{t}\""),
        Duration::from_secs(10)
    ));
    assert_eq!(
        psql(&format!("SELECT id, name FROM {t} ORDER BY id")),
        "1|old\n2|old too"
    );
    psql(&format!("DROP TABLE {t}; DROP FUNCTION {t}_slow()"));
}

/// Copies a folder tree (the shipped example projects).
pub(crate) fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

#[test]
fn the_postgres_example_loads_validates_and_reruns_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/postgres"),
        dir.path(),
    );
    psql("DROP TABLE IF EXISTS example_orders, example_daily_sales");
    let run = || {
        let out = Command::new(crate::common::bin())
            .args(["--project"])
            .arg(dir.path())
            .args(["run", "orders_to_postgres", "--json"])
            .env_remove("WAREHOUSE_URL")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run();
    // 40 orders, one with a negative amount quarantined; upserted on the order id.
    assert_eq!(
        psql("SELECT count(*), count(DISTINCT order_id) FROM example_orders"),
        "39|39"
    );
    assert_eq!(
        psql("SELECT data_type, numeric_precision, numeric_scale FROM information_schema.columns WHERE table_name = 'example_orders' AND column_name = 'amount'"),
        "numeric|10|2"
    );
    let rejected: Vec<_> = std::fs::read_dir(dir.path().join("results"))
        .unwrap()
        .collect();
    assert_eq!(rejected.len(), 1);
    let daily = psql("SELECT sum(orders), sum(total) FROM example_daily_sales");
    let total = psql("SELECT sum(amount) FROM example_orders");
    assert_eq!(daily, format!("39|{total}"));
    // Again: nothing new since the cursor, nothing duplicated.
    run();
    assert_eq!(psql("SELECT count(*) FROM example_orders"), "39");
    assert_eq!(psql("SELECT sum(orders) FROM example_daily_sales"), "39");
    psql("DROP TABLE IF EXISTS example_orders, example_daily_sales");
}
