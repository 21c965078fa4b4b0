//! The data plane end to end through the real binary: CSV in (delimiters, encodings,
//! declared types), SQL transforms, the Parquet warehouse and CSV out; files read back with
//! DuckDB and pyarrow; type errors located; partitions replaced on re-runs; incremental
//! cursors that move only with a successful run.

use crate::common::{latest_run, py, Project};

const SALES: &str = "order_id,created_at,customer_email,sku,quantity,price,country,status
1,2024-01-05 10:00:00,a@x.com,SKU1,2,10.50,ES,paid
2,2024-01-05 11:00:00,b@x.com,SKU2,1,5.25,FR,cancelled
3,2024-01-06 09:30:00,c@x.com,SKU1,3,10.50,ES,paid
";

fn warehouse_pipeline() -> &'static str {
    r#"
name: sales
tasks:
  raw:
    extract:
      source: csv
      path: data/sales.csv
      columns:
        price: decimal(10,2)
  clean:
    depends_on: [raw]
    sql: |
      SELECT order_id, created_at, customer_email, quantity, price,
             CAST(quantity * price AS DECIMAL(12,2)) AS total, country,
             CAST(created_at AS DATE) AS day
      FROM raw WHERE status <> 'cancelled'
  save:
    depends_on: [clean]
    load:
      sink: parquet
      path: warehouse/sales/
      partition_by: [day]
"#
}

#[test]
fn csv_to_partitioned_parquet_reads_back_with_types() {
    let p = Project::new();
    p.write("data/sales.csv", SALES);
    p.pipeline("sales", warehouse_pipeline());
    let r = p.run(&["run", "sales"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let out = py(
        p.path(),
        r#"
import duckdb, pyarrow.dataset as ds
t = ds.dataset('warehouse/sales', format='parquet', partitioning='hive').to_table()
types = {f.name: str(f.type) for f in t.schema}
print(types['created_at'], types['price'], types['total'], types['customer_email'])
rows = duckdb.sql("select day, count(*), sum(total) from read_parquet('warehouse/sales/**/*.parquet', hive_partitioning=true) group by day order by day").fetchall()
print(rows)
"#,
    );
    let mut lines = out.lines();
    let types = lines.next().unwrap();
    assert!(types.starts_with("timestamp"), "{types}");
    assert!(
        types.contains("decimal128(10, 2) decimal128(12, 2)"),
        "{types}"
    );
    assert!(types.ends_with("string"), "{types}");
    let rows = lines.next().unwrap();
    assert!(rows.contains("2024, 1, 5), 1, Decimal('21.00')"), "{rows}");
    assert!(rows.contains("2024, 1, 6), 1, Decimal('31.50')"), "{rows}");
    // The run's metrics count rows.
    let status = p.status(&latest_run(&p));
    let save = status["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task_id"] == "save")
        .unwrap()
        .clone();
    assert_eq!(save["metrics"]["rows_out"], 2, "{save}");
}

#[test]
fn rerunning_a_date_replaces_its_partitions() {
    let p = Project::new();
    p.write("data/sales.csv", SALES);
    p.pipeline("sales", warehouse_pipeline());
    assert_eq!(p.run(&["run", "sales"]).code, 0);
    // The source changes for one day; the other day's partition is left alone.
    p.write(
        "data/sales.csv",
        "order_id,created_at,customer_email,sku,quantity,price,country,status
1,2024-01-05 10:00:00,a@x.com,SKU1,1,10.50,ES,paid
4,2024-01-05 12:00:00,d@x.com,SKU1,1,1.00,ES,paid
",
    );
    assert_eq!(p.run(&["run", "sales"]).code, 0);
    let out = py(
        p.path(),
        "import duckdb\nprint(duckdb.sql(\"select day, count(*) from read_parquet('warehouse/sales/**/*.parquet', hive_partitioning=true) group by day order by day\").fetchall())",
    );
    assert!(out.contains("2024, 1, 5), 2)"), "{out}");
    assert!(out.contains("2024, 1, 6), 1)"), "{out}");
}

#[test]
fn a_partitioned_load_on_two_threads_with_more_partitions_than_open_files_keeps_every_row() {
    let p = Project::new();
    // 64 MiB of memory: the writer keeps only a few files open, fewer than the 60
    // partitions this load feeds at once, so the rows of the others are spilled to disk and
    // encoded at the end.
    p.write(
        "cauce.yaml",
        "name: test\ndata:\n  max_memory: 64MiB\n  threads: 2\n",
    );
    let mut csv = String::from("id,region,month,amount\n");
    for i in 0..120_000u64 {
        let region = ["norte", "sur", "este", "oeste", "centro", "islas"][(i % 6) as usize];
        csv.push_str(&format!(
            "{i},{region},{},{}.{:02}\n",
            i / 6 % 10 + 1,
            i % 997,
            i % 100
        ));
    }
    p.write("data/sales.csv", &csv);
    p.pipeline(
        "wide",
        r#"
tasks:
  raw:
    extract: {source: csv, path: data/sales.csv, columns: {amount: "decimal(10,2)"}}
  save:
    depends_on: [raw]
    load: {sink: parquet, path: warehouse/by_region/, partition_by: [region, month]}
"#,
    );
    let r = p.run(&["run", "wide"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let out = py(
        p.path(),
        r#"
import duckdb, glob, pyarrow.parquet as pq
print(duckdb.sql("select count(*), count(distinct id), sum(amount) from read_parquet('warehouse/by_region/**/*.parquet', hive_partitioning=true)").fetchall())
print(duckdb.sql("select count(*) from read_csv('data/sales.csv') c join read_parquet('warehouse/by_region/**/*.parquet', hive_partitioning=true) w on c.id = w.id and c.region = w.region and c.month = w.month and c.amount = w.amount").fetchall())
leaves = sorted(set(f.rsplit('/', 1)[0] for f in glob.glob('warehouse/by_region/*/*/*.parquet')))
print(len(leaves), leaves[0])
files = glob.glob('warehouse/by_region/*/*/*.parquet')
print(len(files) == len(leaves), sorted(pq.read_schema(files[0]).names))
"#,
    );
    let lines: Vec<&str> = out.lines().collect();
    let expected: u64 = (0..120_000u64).map(|i| (i % 997) * 100 + i % 100).sum();
    assert_eq!(
        lines[0],
        format!(
            "[(120000, 120000, Decimal('{}.{:02}'))]",
            expected / 100,
            expected % 100
        ),
        "{out}"
    );
    assert_eq!(
        lines[1], "[(120000,)]",
        "every row in its own partition: {out}"
    );
    assert_eq!(
        lines[2], "60 warehouse/by_region/region=centro/month=1",
        "{out}"
    );
    // One file a partition, spilled or not; the partition columns are in the folder names,
    // not in the files.
    assert_eq!(lines[3], "True ['amount', 'id']", "{out}");
    // The load's log says how many partitions went to the spill file first: those that
    // found every file slot taken.
    let log = p.read(&format!(".cauce/logs/{}/save.1.log", latest_run(&p)));
    let line = log
        .lines()
        .find(|l| l.contains("partitioned write:"))
        .unwrap_or_else(|| panic!("no report in {log}"));
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    let [rows, parts, open, spilled, _mib] = numbers[..] else {
        panic!("{line}");
    };
    assert_eq!((rows, parts), (120_000, 60), "{line}");
    assert!(open < 60 && spilled == 60 - open, "{line}");
}

#[test]
fn partition_values_that_are_null_or_look_like_paths_stay_inside_the_target() {
    let p = Project::new();
    p.write(
        "data/in.csv",
        "id,zone\n1,../../escape\n2,a/b\n3,\n4,norte\n5,..\n",
    );
    p.pipeline(
        "odd",
        r#"
tasks:
  raw:
    extract: {source: csv, path: data/in.csv}
  save:
    depends_on: [raw]
    load: {sink: parquet, path: out/by_zone/, partition_by: [zone]}
"#,
    );
    let r = p.run(&["run", "odd"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let mut dirs: Vec<String> = std::fs::read_dir(p.path().join("out/by_zone"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    assert_eq!(
        dirs,
        [
            "zone=..",
            "zone=..%2F..%2Fescape",
            "zone=__HIVE_DEFAULT_PARTITION__",
            "zone=a%2Fb",
            "zone=norte"
        ],
        "one folder per value, right below the target"
    );
    assert!(!p.path().join("escape").exists() && !p.path().join("out/escape").exists());
    // pyarrow reads the null partition back as null, and the escaped values as written.
    let out = py(
        p.path(),
        r#"
import pyarrow.dataset as ds
t = ds.dataset('out/by_zone', format='parquet', partitioning='hive').to_table()
print(sorted(zip(t.column('id').to_pylist(), t.column('zone').to_pylist())))
"#,
    );
    assert_eq!(
        out.trim(),
        "[(1, '../../escape'), (2, 'a/b'), (3, None), (4, 'norte'), (5, '..')]",
        "{out}"
    );
}

#[test]
fn a_partitioned_load_keeps_dictionaries_for_columns_of_few_values_only() {
    // 3,000 rows into 2 days: `email` has a distinct value on every row (its dictionary
    // would overflow the dictionary page), `country` has three.
    let p = Project::new();
    let mut csv = String::from("email,country,day\n");
    for i in 0..3000 {
        let country = ["ES", "AR", "MX"][i % 3];
        csv.push_str(&format!(
            "user{i}@example.com,{country},2024-01-0{}\n",
            1 + i % 2
        ));
    }
    p.write("data/in.csv", &csv);
    p.pipeline(
        "dict",
        r#"
tasks:
  raw:
    extract: {source: csv, path: data/in.csv}
  save:
    depends_on: [raw]
    load: {sink: parquet, path: out/by_day/, partition_by: [day]}
"#,
    );
    let r = p.run(&["run", "dict"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let out = py(
        p.path(),
        r#"
import glob, pyarrow.parquet as pq, pyarrow.dataset as ds
for f in sorted(glob.glob('out/by_day/*/*.parquet')):
    rg = pq.ParquetFile(f).metadata.row_group(0)
    cols = {rg.column(i).path_in_schema: rg.column(i) for i in range(rg.num_columns)}
    print(f.split('/')[2], 'RLE_DICTIONARY' in cols['email'].encodings, 'RLE_DICTIONARY' in cols['country'].encodings)
t = ds.dataset('out/by_day', format='parquet', partitioning='hive').to_table()
print(t.num_rows, len(set(t.column('email').to_pylist())), sorted(set(t.column('country').to_pylist())))
"#,
    );
    assert_eq!(
        out.trim(),
        "day=2024-01-01 False True\nday=2024-01-02 False True\n3000 3000 ['AR', 'ES', 'MX']",
        "plain pages for the e-mails, a dictionary for the countries, every row back: {out}"
    );
}

#[test]
fn a_partitioned_load_naming_every_column_or_a_missing_one_fails_and_writes_nothing() {
    let p = Project::new();
    p.write(
        "data/in.csv",
        "zone,day\nnorte,2024-01-01\nsur,2024-01-02\n",
    );
    p.pipeline(
        "bad",
        r#"
tasks:
  raw:
    extract: {source: csv, path: data/in.csv}
  every:
    depends_on: [raw]
    critical: false
    load: {sink: parquet, path: out/every/, partition_by: [zone, day]}
  missing:
    depends_on: [raw]
    critical: false
    load: {sink: parquet, path: out/missing/, partition_by: [region]}
"#,
    );
    let r = p.run(&["run", "bad"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(
        all.contains("`partition_by` names every column: the files would have none left"),
        "{all}"
    );
    assert!(
        all.contains("`partition_by` column `region` is not in `raw`; its columns: zone, day"),
        "{all}"
    );
    // Nothing left behind: no target, no staging folder.
    let left: Vec<String> = std::fs::read_dir(p.path().join("out"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn latin1_semicolon_csv_with_formats_and_null_markers() {
    let p = Project::new();
    std::fs::create_dir_all(p.path().join("data")).unwrap();
    // Windows-1252 bytes: é = 0xE9, ñ = 0xF1.
    std::fs::write(
        p.path().join("data/clientes.csv"),
        b"id;nombre;alta;nota\n1;Jos\xe9;05/01/2024 10:30;NULL\n2;Mu\xf1oz;06/01/2024 08:00;vip\n",
    )
    .unwrap();
    p.pipeline(
        "clientes",
        r#"
tasks:
  raw:
    extract:
      source: csv
      path: data/clientes.csv
      delimiter: ";"
      encoding: latin1
      null: ["NULL", ""]
      columns:
        alta: {type: timestamp, format: "%d/%m/%Y %H:%M"}
  out:
    depends_on: [raw]
    load: {sink: parquet, path: out/clientes.parquet}
"#,
    );
    let r = p.run(&["run", "clientes"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let out = py(
        p.path(),
        "import pyarrow.parquet as pq\nt = pq.read_table('out/clientes.parquet')\nprint(t.schema.field('alta').type)\nprint(t.column('nombre').to_pylist(), t.column('nota').to_pylist(), t.column('alta').to_pylist()[0])",
    );
    assert!(out.starts_with("timestamp[us]"), "{out}");
    assert!(
        out.contains("['José', 'Muñoz'] [None, 'vip'] 2024-01-05 10:30:00"),
        "{out}"
    );
}

/// With null markers every column is read as text and cast after the read; a bad value is
/// still reported with its file, line and column, for numbers and timestamps alike.
#[test]
fn a_bad_value_beside_null_markers_is_reported_with_its_line() {
    let p = Project::new();
    p.write("data/a.csv", "id,qty,at\n1,2,2024-01-05 10:00:00\n2,-,-\n");
    p.write(
        "data/b.csv",
        "id,qty,at\n3,-,2024-01-06 10:00:00\n4,5,-\n5,6,2024-01-07 10:00:00\n6,lots,-\n",
    );
    p.write(
        "data/c.csv",
        "id,qty,at\n7,1,2024-01-05 10:00:00\n8,-,yesterday\n",
    );
    for (name, glob, want) in [
        (
            "qty",
            "data/[ab].csv",
            "b.csv: line 5, column `qty` (column 2): value `lots` is not a valid int",
        ),
        (
            "at",
            "data/[ac].csv",
            "c.csv: line 3, column `at` (column 3): value `yesterday` is not a valid timestamp",
        ),
    ] {
        p.pipeline(
            name,
            &format!(
                "tasks:\n  raw:\n    extract: {{source: csv, path: \"{glob}\", null: [\"-\"], columns: {{qty: int, at: timestamp}}}}\n"
            ),
        );
        let r = p.run(&["run", name]);
        assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
        let status = p.status(&latest_run(&p));
        let err = status["tasks"][0]["error"].as_str().unwrap().to_string();
        assert!(err.contains(want), "{err}");
    }
}

/// With null markers, a file of a header only, and a column of nothing but markers in the
/// rows inferred from, read without error and keep every value.
#[test]
fn null_markers_with_no_rows_or_a_column_of_markers_read() {
    let p = Project::new();
    p.write("data/empty.csv", "id;note\n");
    let mut rows = String::from("id;note\n");
    for i in 0..30 {
        rows.push_str(&format!("{i};-\n"));
    }
    rows.push_str("30;late\n");
    p.write("data/notes.csv", &rows);
    for (name, file, want) in [
        ("empty", "empty.csv", "0 []"),
        ("notes", "notes.csv", "31 ['late']"),
    ] {
        p.pipeline(
            name,
            &format!(
                "tasks:\n  raw:\n    extract: {{source: csv, path: data/{file}, delimiter: \";\", null: [\"-\"], infer_rows: 10}}\n  out:\n    depends_on: [raw]\n    load: {{sink: parquet, path: out/{name}.parquet}}\n"
            ),
        );
        let r = p.run(&["run", name]);
        assert_eq!(r.code, 0, "{name}: {}{}", r.stdout, r.stderr);
        let out = py(
            p.path(),
            &format!("import pyarrow.parquet as pq\nt = pq.read_table('out/{name}.parquet')\nprint(t.num_rows, [v for v in t.column('note').to_pylist() if v])"),
        );
        assert_eq!(out.trim(), want, "{name}");
    }
}

#[test]
fn a_bad_value_is_reported_with_file_line_and_column() {
    let p = Project::new();
    p.write("data/a.csv", "id,qty\n1,2\n2,3\n");
    p.write("data/b.csv", "id,qty\n3,4\n4,many\n");
    p.pipeline(
        "bad",
        r#"
tasks:
  raw:
    extract:
      source: csv
      path: data/*.csv
      columns: {qty: int}
"#,
    );
    let r = p.run(&["run", "bad"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let status = p.status(&latest_run(&p));
    let err = status["tasks"][0]["error"].as_str().unwrap().to_string();
    assert!(err.contains("b.csv"), "{err}");
    assert!(err.contains("column `qty`"), "{err}");
    assert!(err.contains("many"), "{err}");
    assert!(err.contains("line 3,"), "{err}");
}

#[test]
fn declared_timestamps_of_every_shape_read_back_and_a_bad_one_is_located() {
    let p = Project::new();
    // One file whose values all have the plain shape, and one that mixes in an offset
    // and a date alone; with a null marker, the same values take the text path.
    p.write(
        "data/ts/a.csv",
        "id,at\n1,2024-01-05 10:00:00\n2,2024-01-05T10:00:00.250Z\n3,\n",
    );
    p.write(
        "data/ts/b.csv",
        "id,at\n4,2024-01-05 12:00:00+02:00\n5,2024-02-29\n6,-\n",
    );
    p.write("data/bad/a.csv", "id,at\n1,2024-01-05 10:00:00\n");
    p.write(
        "data/bad/b.csv",
        "id,at\n2,2024-01-05 10:00:00\n3,2024-02-30 10:00:00\n",
    );
    p.pipeline(
        "ts",
        r#"
tasks:
  plain:
    extract: {source: csv, path: data/ts/a.csv, columns: {at: timestamp}}
  mixed:
    extract: {source: csv, path: "data/ts/*.csv", null: ["-", ""], columns: {at: timestamp}}
  both:
    depends_on: [plain, mixed]
    sql: SELECT * FROM plain UNION ALL SELECT * FROM mixed ORDER BY id
  out:
    depends_on: [both]
    load: {sink: parquet, path: out/ts.parquet}
"#,
    );
    p.pipeline(
        "bad",
        r#"
tasks:
  raw:
    extract: {source: csv, path: "data/bad/*.csv", columns: {at: timestamp}}
"#,
    );
    let r = p.run(&["run", "ts"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let out = py(
        p.path(),
        "import pyarrow.parquet as pq\nt = pq.read_table('out/ts.parquet')\nprint(t.schema.field('at').type)\nfor v in t.column('at').to_pylist(): print(v)",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("timestamp[us"), "{out}");
    // Ids 1, 1, 2, 2, 3, 3, 4, 5, 6; the offset is taken into account.
    let expect = [
        "2024-01-05 10:00:00",
        "2024-01-05 10:00:00",
        "2024-01-05 10:00:00.250000",
        "2024-01-05 10:00:00.250000",
        "None",
        "None",
        "2024-01-05 10:00:00",
        "2024-02-29 00:00:00",
        "None",
    ];
    assert_eq!(lines.len(), expect.len() + 1, "{out}");
    for (got, want) in lines[1..].iter().zip(expect) {
        assert!(got.starts_with(want), "{got} is not {want}: {out}");
    }
    let r = p.run(&["run", "bad"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let status = p.status(&latest_run(&p));
    let err = status["tasks"][0]["error"].as_str().unwrap().to_string();
    assert!(err.contains("b.csv: line 3, column `at`"), "{err}");
    assert!(
        err.contains("`2024-02-30 10:00:00` is not a valid timestamp"),
        "{err}"
    );
}

#[test]
fn warehouse_files_are_zstd_unless_told_otherwise_and_a_bad_codec_is_a_located_error() {
    let p = Project::new();
    p.write("data/in.csv", "id,zone\n1,norte\n2,sur\n3,norte\n");
    p.pipeline(
        "codec",
        r#"
tasks:
  raw:
    extract: {source: csv, path: data/in.csv}
  plain:
    depends_on: [raw]
    load: {sink: parquet, path: out/plain.parquet}
  fast:
    depends_on: [raw]
    load: {sink: parquet, path: out/fast/, partition_by: [zone], compression: snappy}
"#,
    );
    let r = p.run(&["run", "codec"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let out = py(
        p.path(),
        r#"
import glob, pyarrow.parquet as pq
for f in ['out/plain.parquet'] + sorted(glob.glob('out/fast/*/*.parquet')):
    md = pq.ParquetFile(f).metadata
    print(sorted({md.row_group(i).column(j).compression for i in range(md.num_row_groups) for j in range(md.num_columns)}))
"#,
    );
    assert_eq!(out.trim(), "['ZSTD']\n['SNAPPY']\n['SNAPPY']", "{out}");

    p.pipeline(
        "badcodec",
        "tasks:\n  raw:\n    extract: {source: csv, path: data/in.csv}\n  save:\n    depends_on: [raw]\n    load: {sink: parquet, path: out/x/, compression: zstd(40)}\n",
    );
    let r = p.run(&["validate", "badcodec"]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(all.contains("invalid compression `zstd(40)`"), "{all}");
    assert!(all.contains("badcodec.yaml:6:"), "{all}");
    // A level without its closing parenthesis is a typo, not plain zstd.
    p.pipeline(
        "badcodec",
        "tasks:\n  raw:\n    extract: {source: csv, path: data/in.csv}\n  save:\n    depends_on: [raw]\n    load: {sink: parquet, path: out/x/, compression: \"zstd(1\"}\n",
    );
    let r = p.run(&["validate", "badcodec"]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(
        format!("{}{}", r.stdout, r.stderr).contains("invalid compression `zstd(1`; use zstd"),
        "{}{}",
        r.stdout,
        r.stderr
    );
}

#[test]
fn unknown_sources_sinks_and_options_are_located_errors() {
    let p = Project::new();
    p.pipeline(
        "typo",
        "tasks:\n  a:\n    extract: {source: cvs, path: x.csv}\n  b:\n    depends_on: [a]\n    load: {sink: parquet, path: o/, partition_bye: [d]}\n  c:\n    load: {sink: csv, path: o.csv, from: a}\n",
    );
    let r = p.run(&["validate", "typo"]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(
        all.contains("unknown source `cvs`") && all.contains("did you mean `csv`"),
        "{all}"
    );
    assert!(all.contains("partition_bye"), "{all}");
    assert!(
        all.contains("`from` names `a`, which is not in `depends_on`"),
        "{all}"
    );
    assert!(all.contains("typo.yaml:3:"), "{all}");
}

fn task<'a>(status: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    status["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task_id"] == id)
        .unwrap_or_else(|| panic!("no task {id} in {status}"))
}

#[test]
fn incremental_cursor_moves_only_with_a_successful_run() {
    let p = Project::new();
    p.write(
        "data/orders.csv",
        "id,updated_at,amount\n1,2024-01-01 10:00:00,5\n2,2024-01-02 10:00:00,6\n",
    );
    p.pipeline(
        "orders",
        r#"
tasks:
  orders:
    extract:
      source: csv
      path: data/orders.csv
      incremental: {cursor: updated_at}
  save:
    depends_on: [orders]
    load: {sink: csv, path: "{{ params.target }}"}
params:
  target: {default: out/orders.csv}
"#,
    );
    assert_eq!(p.run(&["run", "orders"]).code, 0);
    let s = p.status(&latest_run(&p));
    assert_eq!(task(&s, "orders")["metrics"]["rows_out"], 2);
    assert_eq!(
        task(&s, "orders")["output"]["watermark"]["value"],
        "2024-01-02T10:00:00"
    );
    // New rows arrive; the load fails (its target is a folder): the cursor must stay.
    p.write(
        "data/orders.csv",
        "id,updated_at,amount\n1,2024-01-01 10:00:00,5\n2,2024-01-02 10:00:00,6\n3,2024-01-03 10:00:00,7\n4,2024-01-04 10:00:00,8\n",
    );
    std::fs::create_dir_all(p.path().join("out/blocked.csv")).unwrap();
    let r = p.run(&["run", "orders", "-p", "target=out/blocked.csv"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let s = p.status(&latest_run(&p));
    assert_eq!(task(&s, "orders")["metrics"]["rows_out"], 2);
    assert_eq!(task(&s, "save")["state"], "failed");
    // The next good run reads the same two rows again, and then the cursor moves.
    assert_eq!(p.run(&["run", "orders"]).code, 0);
    let s = p.status(&latest_run(&p));
    assert_eq!(task(&s, "orders")["metrics"]["rows_out"], 2);
    assert_eq!(
        task(&s, "orders")["output"]["watermark"]["value"],
        "2024-01-04T10:00:00"
    );
    let out = p.read("out/orders.csv");
    assert!(
        out.contains("\n3,") && out.contains("\n4,") && !out.contains("\n1,"),
        "{out}"
    );
    // Nothing new: an empty dataset, and the cursor stays where it was.
    assert_eq!(p.run(&["run", "orders"]).code, 0);
    let s = p.status(&latest_run(&p));
    assert_eq!(task(&s, "orders")["metrics"]["rows_out"], 0);
    assert_eq!(
        task(&s, "orders")["output"]["watermark"]["value"],
        "2024-01-04T10:00:00"
    );
}

#[test]
fn a_failed_load_leaves_the_previous_file_whole() {
    let p = Project::new();
    p.write("data/a.csv", "id,qty\n1,2\n2,3\n");
    p.pipeline(
        "l",
        r#"
tasks:
  raw:
    extract: {source: csv, path: "data/{{ params.file }}", columns: {qty: int}}
  save:
    depends_on: [raw]
    load: {sink: parquet, path: out/a.parquet}
params:
  file: {default: a.csv}
"#,
    );
    assert_eq!(p.run(&["run", "l"]).code, 0);
    let before = std::fs::read(p.path().join("out/a.parquet")).unwrap();
    // A SQL error in a downstream query, and a source that fails: the file stays as it was.
    p.write("data/b.csv", "id,qty\n1,x\n");
    assert_eq!(p.run(&["run", "l", "-p", "file=b.csv"]).code, 1);
    assert_eq!(
        std::fs::read(p.path().join("out/a.parquet")).unwrap(),
        before
    );
    let leftovers: Vec<_> = std::fs::read_dir(p.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
}

#[test]
fn sql_params_are_bound_or_quoted_never_spliced() {
    let p = Project::new();
    p.write("data/c.csv", "name,country\nAna,ES\nBob,FR\nO'Hara,IE\n");
    p.pipeline(
        "q",
        r#"
params:
  country: {default: ES}
tasks:
  raw:
    extract: {source: csv, path: data/c.csv}
  bound:
    depends_on: [raw]
    sql: "SELECT name FROM raw WHERE country = $country"
  templated:
    depends_on: [raw]
    sql: "SELECT name FROM raw WHERE country = {{ params.country }}"
  b_out:
    depends_on: [bound]
    load: {sink: csv, path: out/bound.csv}
  t_out:
    depends_on: [templated]
    load: {sink: csv, path: out/templated.csv}
"#,
    );
    let evil = "country=x' OR '1'='1";
    let r = p.run(&["run", "q", "-p", evil]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(p.read("out/bound.csv").trim(), "name");
    assert_eq!(p.read("out/templated.csv").trim(), "name");
    assert_eq!(p.run(&["run", "q", "-p", "country=IE"]).code, 0);
    assert_eq!(p.read("out/bound.csv").trim(), "name\nO'Hara");
    assert_eq!(p.read("out/templated.csv").trim(), "name\nO'Hara");
    // Statements other than queries are refused.
    p.pipeline(
        "ddl",
        "tasks:\n  x:\n    sql: \"CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'\"\n",
    );
    let r = p.run(&["run", "ddl"]);
    assert_eq!(r.code, 1);
    let s = p.status(&latest_run(&p));
    assert!(
        task(&s, "x")["error"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("ddl"),
        "{s}"
    );
}

#[test]
fn a_sort_larger_than_max_memory_spills_and_completes() {
    let p = Project::new();
    p.write(
        "cauce.yaml",
        "name: test\nkill_grace: 1s\ndata:\n  max_memory: 64MiB\n  threads: 2\n",
    );
    // About 110 MB of text: more than the 64 MiB the query engine may hold.
    let mut csv = String::with_capacity(112_000_000);
    csv.push_str("id,key,payload\n");
    for i in 0..1_000_000u64 {
        let key = (i * 2_654_435_761) % 1_000_003;
        csv.push_str(&format!("{i},{key},{:0>80}\n", i));
    }
    p.write("data/big.csv", &csv);
    p.pipeline(
        "big",
        r#"
tasks:
  raw:
    extract: {source: csv, path: data/big.csv}
  sorted:
    depends_on: [raw]
    sql: "SELECT * FROM raw ORDER BY key, id"
"#,
    );
    let r = p.run(&["run", "big"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let s = p.status(&latest_run(&p));
    assert_eq!(task(&s, "sorted")["metrics"]["rows_out"], 1_000_000);
}

#[test]
fn the_init_example_builds_the_sales_warehouse_and_reruns_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("demo");
    let cauce = crate::common::init_project(&target);
    for _ in 0..2 {
        let r = cauce(&["run", "sales_warehouse"]);
        assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    }
    let out = py(
        &target,
        r#"
import duckdb
con = duckdb.connect()
print(con.sql("select count(*), count(distinct pedido), min(dia), max(dia) from read_parquet('warehouse/ventas/**/*.parquet', hive_partitioning=true)").fetchall())
print(con.sql("select typeof(fecha), typeof(total), typeof(nombre) from read_parquet('warehouse/ventas/**/*.parquet', hive_partitioning=true) limit 1").fetchall())
print(con.sql("select count(*) from read_parquet('warehouse/ventas/**/*.parquet', hive_partitioning=true) where nombre like '%ñ%' or nombre like '%é%'").fetchall())
print(con.sql("select sum(pedidos) from read_csv('results/resumen_por_region.csv')").fetchall())
import openpyxl
wb = openpyxl.load_workbook('results/informe_ventas.xlsx')
print(wb.sheetnames, [c.value for c in wb['Por región'][1]], sum(r[2].value for r in wb['Por región'].iter_rows(min_row=2)))
"#,
    );
    let lines: Vec<&str> = out.lines().collect();
    // Every line appears once after two runs (185 valid order lines in the shipped exports).
    assert!(
        lines[0].starts_with("[(185, 185, datetime.date(2024, 9, 16), datetime.date(2024, 9, 18))"),
        "{out}"
    );
    assert_eq!(
        lines[1], "[('TIMESTAMP', 'DECIMAL(12,2)', 'VARCHAR')]",
        "{out}"
    );
    assert_ne!(
        lines[2], "[(0,)]",
        "accented names survive the Windows-1252 export: {out}"
    );
    assert_eq!(lines[3], "[(185,)]", "{out}");
    assert_eq!(
        lines[4],
        "['Por región', 'Por categoría'] ['dia', 'region', 'pedidos', 'ventas', 'margen'] 185",
        "{out}"
    );
}

#[test]
fn an_interrupted_load_leaves_the_target_and_the_cursor_as_they_were() {
    use std::time::{Duration, Instant};
    let p = Project::new();
    p.write(
        "data/o.csv",
        "id,updated_at,note\n1,2024-01-01 00:00:01,a\n2,2024-01-01 00:00:02,b\n",
    );
    p.pipeline(
        "o",
        r#"
tasks:
  orders:
    extract: {source: csv, path: data/o.csv, incremental: {cursor: updated_at}}
  save:
    depends_on: [orders]
    load: {sink: parquet, path: out/o.parquet, compression: none}
"#,
    );
    assert_eq!(p.run(&["run", "o"]).code, 0);
    let before = std::fs::read(p.path().join("out/o.parquet")).unwrap();
    // Many new rows, so that the load takes a while; Ctrl-C once it is writing (the staging
    // file appears once the writer has 10 MiB to put in it: uncompressed, that is early).
    let mut csv = String::from("id,updated_at,note\n");
    for i in 0..1_500_000u64 {
        csv.push_str(&format!(
            "{},2024-02-{:02} {:02}:{:02}:{:02},row {i} with some text to make it wider\n",
            i + 3,
            1 + i % 28,
            i / 3600 % 24,
            i / 60 % 60,
            i % 60
        ));
    }
    p.write("data/o.csv", &csv);
    let child = p.spawn(&["run", "o"]);
    let pid = child.id();
    let start = Instant::now();
    let writing = |p: &Project| {
        std::fs::read_dir(p.path().join("out")).is_ok_and(|rd| {
            rd.filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().starts_with(".staging"))
        })
    };
    while !writing(&p) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the load never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    crate::common::signal(pid, "INT");
    let r = crate::common::wait_with_limit(child, Duration::from_secs(30));
    assert_eq!(r.code, 130, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        std::fs::read(p.path().join("out/o.parquet")).unwrap(),
        before
    );
    let names: Vec<String> = std::fs::read_dir(p.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["o.parquet".to_string()], "staging left behind");
    let s = p.status(&latest_run(&p));
    assert_eq!(task(&s, "save")["state"], "cancelled", "{s}");
    // The cursor did not move: the next run reads every new row.
    assert_eq!(p.run(&["run", "o"]).code, 0);
    let s = p.status(&latest_run(&p));
    assert_eq!(task(&s, "orders")["metrics"]["rows_out"], 1_500_000);
}

#[test]
fn a_retry_runs_again_a_succeeded_extract_whose_dataset_is_gone() {
    let p = Project::new();
    p.write("sales.csv", SALES);
    p.pipeline(
        "gone",
        "tasks:\n  raw: {extract: {source: csv, path: sales.csv}}\n  check: {depends_on: [raw], run: \"test -f go\"}\n",
    );
    let r = p.run(&["run", "gone"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let id = latest_run(&p);
    let first = p.status(&id);
    assert_eq!(task(&first, "raw")["state"], "success", "{first}");
    assert_eq!(task(&first, "check")["state"], "failed", "{first}");
    // What `data.retention` does to an old run's datasets.
    std::fs::remove_dir_all(p.path().join(format!(".cauce/data/{id}/raw"))).unwrap();
    p.write("go", "");
    let r = p.run(&["retry", &id]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let status = p.status(&id);
    let tries: Vec<&serde_json::Value> = status["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["task_id"] == "raw")
        .collect();
    assert_eq!(tries.len(), 2, "the extract ran again: {status}");
    assert!(p.path().join(format!(".cauce/data/{id}/raw")).is_dir());
}
