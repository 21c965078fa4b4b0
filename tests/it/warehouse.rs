//! The star schema through the real binary: `dimension` (SCD1 and SCD2 history across
//! runs, stable surrogate keys, the unknown member) in the real PostgreSQL and in Parquet,
//! `fact` (the version valid at the event date, missing members counted and mapped to -1,
//! loaded with upsert so a re-run duplicates nothing), the `calendar` source (Spanish
//! names, ISO weeks across a year end, holidays), bad input, and `examples/star_schema`
//! run twice.

use crate::common::{latest_run, py, Project};
use crate::data_db::{psql, unique, PG_URL};
use serde_json::Value;

/// Where a test's dimension lives.
#[derive(Clone, Copy, Debug)]
enum Store {
    Postgres,
    Parquet,
}

/// The customers of each of three runs: a city change (a new version), a name change (an
/// untracked column: overwritten in place), a new member, then two more changes.
const CUSTOMERS: [&str; 3] = [
    "customer_id,name,city,segment\n1,Ana,Madrid,retail\n2,Luis,Sevilla,retail\n3,Marta,Bilbao,pyme\n",
    "customer_id,name,city,segment\n1,Ana,Barcelona,retail\n2,Luis M.,Sevilla,retail\n3,Marta,Bilbao,pyme\n4,Pedro,Vigo,pyme\n",
    "customer_id,name,city,segment\n1,Ana,Valencia,retail\n2,Luis M.,Sevilla,retail\n3,Marta,Bilbao,retail\n4,Pedro,Vigo,pyme\n",
];

const DATES: [&str; 3] = ["2026-01-01", "2026-02-01", "2026-03-01"];

/// Orders against those versions: one in each version of customer 1, one of customer 3
/// before its change, one of a customer that does not exist, one with no customer.
const ORDERS: &str = "order_id,customer_id,order_date,amount
100,1,2026-01-15,10.5
101,1,2026-02-15,20.0
102,1,2026-03-15,30.0
103,9,2026-03-01,5.0
104,,2026-03-02,1.0
105,3,2026-02-28,7.0
";

fn target(store: Store, table: &str) -> String {
    match store {
        Store::Postgres => format!("{{sink: postgres, url: \"{PG_URL}\", table: {table}}}"),
        Store::Parquet => format!("{{sink: parquet, path: warehouse/{table}.parquet}}"),
    }
}

fn pipeline(store: Store, dim: &str, fact: &str) -> String {
    let fact_target = match store {
        Store::Postgres => format!(
            "{{sink: postgres, url: \"{PG_URL}\", table: {fact}, mode: upsert, keys: [order_id]}}"
        ),
        Store::Parquet => "{sink: parquet, path: warehouse/fact_ventas.parquet}".to_string(),
    };
    format!(
        r#"
tasks:
  customers:
    extract: {{source: csv, path: data/customers.csv}}
  orders:
    extract:
      source: csv
      path: data/orders.csv
      columns: {{order_date: date, amount: "decimal(10,2)"}}
  fechas:
    extract: {{source: calendar, start: 2026-01-01, end: 2026-12-31, language: es}}
  dim_cliente:
    depends_on: [customers]
    dimension:
      natural_key: customer_id
      scd: 2
      tracked: [city, segment]
      unknown: {{name: Desconocido}}
      target: {}
  fact_ventas:
    depends_on: [orders, dim_cliente, fechas]
    fact:
      from: orders
      dimensions:
        - {{dimension: dim_cliente, on: customer_id, as_of: order_date}}
        - {{dimension: fechas, on: {{order_date: date}}, key: date_key}}
      target: {}
"#,
        target(store, dim),
        fact_target
    )
}

/// The output value of a task in a run's report.
fn output(p: &Project, run: &str, task: &str) -> Value {
    let r = p.run(&["report", run]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    v["results"][task]["output"].clone()
}

fn run_at(p: &Project, pipeline: &str, date: &str, tasks: &[&str]) -> String {
    let selection = tasks.join(",");
    let mut args = vec!["run", pipeline, "--logical-date", date];
    if !tasks.is_empty() {
        args.extend(["--tasks", &selection]);
    }
    let r = p.run(&args);
    let id = latest_run(p);
    assert_eq!(r.code, 0, "{}{}\n{}", r.stdout, r.stderr, p.status(&id));
    id
}

/// The dimension's rows, one line each: key|id|name|city|segment|from|to|current.
fn dimension_rows(p: &Project, store: Store, table: &str) -> String {
    let columns = "cliente_key, customer_id, name, city, segment, CAST(valid_from AS DATE), \
                   CAST(valid_to AS DATE), CASE WHEN is_current THEN 'true' ELSE 'false' END";
    match store {
        Store::Postgres => psql(&format!(
            "SELECT {columns} FROM {table} ORDER BY cliente_key"
        )),
        Store::Parquet => py(
            p.path(),
            &format!(
                "import duckdb\n\
                 rows = duckdb.sql(\"SELECT {columns} FROM 'warehouse/{table}.parquet' ORDER BY cliente_key\").fetchall()\n\
                 print('\\n'.join('|'.join('' if v is None else str(v) for v in r) for r in rows))"
            ),
        )
        .trim()
        .to_string(),
    }
}

fn scd2_history(store: Store) {
    let p = Project::new();
    let dim = unique("dim_cliente");
    let fact = unique("fact_ventas");
    p.pipeline("star", &pipeline(store, &dim, &fact));
    let mut runs = Vec::new();
    for (csv, date) in CUSTOMERS.iter().zip(DATES) {
        p.write("data/customers.csv", csv);
        runs.push(run_at(&p, "star", date, &["customers", "dim_cliente"]));
    }
    let first = output(&p, &runs[0], "dim_cliente");
    assert_eq!(first["new"], 3, "{first}");
    assert_eq!(first["unknown_member_added"], true, "{first}");
    let second = output(&p, &runs[1], "dim_cliente");
    assert_eq!(
        (
            &second["new"],
            &second["versions"],
            &second["closed"],
            &second["updated"]
        ),
        (
            &Value::from(1),
            &Value::from(1),
            &Value::from(1),
            &Value::from(1)
        ),
        "{second}"
    );
    let third = output(&p, &runs[2], "dim_cliente");
    assert_eq!(third["versions"], 2, "{third}");
    assert_eq!(third["new"], 0, "{third}");
    assert_eq!(third["rows"], 8, "{third}");
    let expected = "\
-1||Desconocido|Unknown|Unknown|1900-01-01|9999-12-31|true
1|1|Ana|Madrid|retail|1900-01-01|2026-02-01|false
2|2|Luis M.|Sevilla|retail|1900-01-01|9999-12-31|true
3|3|Marta|Bilbao|pyme|1900-01-01|2026-03-01|false
4|1|Ana|Barcelona|retail|2026-02-01|2026-03-01|false
5|4|Pedro|Vigo|pyme|1900-01-01|9999-12-31|true
6|1|Ana|Valencia|retail|2026-03-01|9999-12-31|true
7|3|Marta|Bilbao|retail|2026-03-01|9999-12-31|true";
    assert_eq!(dimension_rows(&p, store, &dim), expected, "{store:?}");

    // The same rows again: nothing changes, no key moves.
    let again = run_at(&p, "star", "2026-03-02", &["customers", "dim_cliente"]);
    let v = output(&p, &again, "dim_cliente");
    assert_eq!(
        (&v["new"], &v["versions"], &v["updated"]),
        (&Value::from(0), &Value::from(0), &Value::from(0)),
        "{v}"
    );
    assert_eq!(dimension_rows(&p, store, &dim), expected);

    // Facts take the version valid at their date; missing members are counted and -1.
    p.write("data/orders.csv", ORDERS);
    for _ in 0..2 {
        let run = run_at(&p, "star", "2026-03-20", &[]);
        let v = output(&p, &run, "fact_ventas");
        assert_eq!(v["rows"], 6, "{v}");
        assert_eq!(v["keys"]["cliente_key"]["missing"], 2, "{v}");
        assert_eq!(
            v["keys"]["cliente_key"]["examples"],
            serde_json::json!(["9", "null"]),
            "{v}"
        );
        assert_eq!(v["keys"]["date_key"]["missing"], 0, "{v}");
    }
    let facts = match store {
        Store::Postgres => psql(&format!(
            "SELECT order_id, cliente_key, date_key, amount FROM {fact} ORDER BY order_id"
        )),
        Store::Parquet => py(
            p.path(),
            "import duckdb\n\
             rows = duckdb.sql(\"SELECT order_id, cliente_key, date_key, amount FROM 'warehouse/fact_ventas.parquet' ORDER BY order_id\").fetchall()\n\
             print('\\n'.join('|'.join(str(v) for v in r) for r in rows))",
        )
        .trim()
        .to_string(),
    };
    assert_eq!(
        facts,
        "100|1|20260115|10.50\n101|4|20260215|20.00\n102|6|20260315|30.00\n103|-1|20260301|5.00\n104|-1|20260302|1.00\n105|3|20260228|7.00",
        "{store:?}"
    );
    if let Store::Postgres = store {
        psql(&format!("DROP TABLE {dim}; DROP TABLE {fact}"));
    }
}

#[test]
fn scd2_dimension_and_facts_in_postgres() {
    scd2_history(Store::Postgres);
}

#[test]
fn scd2_dimension_and_facts_in_parquet() {
    scd2_history(Store::Parquet);
}

#[test]
fn scd1_overwrites_in_place_and_keeps_keys() {
    let p = Project::new();
    let table = unique("dim_producto");
    p.pipeline(
        "products",
        &format!(
            r#"
tasks:
  products:
    extract: {{source: csv, path: data/products.csv}}
  dim_producto:
    depends_on: [products]
    dimension:
      natural_key: sku
      target: {{sink: postgres, url: "{PG_URL}", table: {table}}}
"#
        ),
    );
    p.write(
        "data/products.csv",
        "sku,name,price\nB-2,Mesa,120.5\nA-1,Silla,40\n",
    );
    run_at(&p, "products", "2026-01-01", &[]);
    p.write(
        "data/products.csv",
        "sku,name,price\nB-2,Mesa grande,150.0\nA-1,Silla,40\nC-3,Lámpara,25\n",
    );
    let run = run_at(&p, "products", "2026-01-02", &[]);
    let v = output(&p, &run, "dim_producto");
    assert_eq!(
        (&v["new"], &v["updated"], &v["unchanged"]),
        (&Value::from(1), &Value::from(1), &Value::from(2)),
        "{v}"
    );
    // Keys in natural-key order on the first load; the new member after them.
    assert_eq!(
        psql(&format!(
            "SELECT producto_key, sku, name, price FROM {table} ORDER BY producto_key"
        )),
        "-1||Unknown|\n1|A-1|Silla|40\n2|B-2|Mesa grande|150\n3|C-3|Lámpara|25"
    );
    psql(&format!("DROP TABLE {table}"));
}

#[test]
fn calendar_names_iso_weeks_and_holidays() {
    let p = Project::new();
    let table = unique("dim_fecha");
    p.pipeline(
        "fechas",
        &format!(
            r#"
tasks:
  fechas:
    extract:
      source: calendar
      start: 2026-12-28
      end: 2027-01-04
      language: es
      holidays: {{2027-01-01: Año Nuevo}}
  dim_fecha:
    depends_on: [fechas]
    load: {{sink: postgres, url: "{PG_URL}", table: {table}, mode: upsert, keys: [date_key]}}
"#
        ),
    );
    for _ in 0..2 {
        run_at(&p, "fechas", "2026-01-01", &[]);
    }
    let rows = psql(&format!(
        "SELECT date_key, date, month_name, day_name, iso_year, iso_week, is_weekend, is_holiday, holiday_name FROM {table} ORDER BY date_key"
    ));
    assert_eq!(
        rows,
        "-1||Desconocido|Desconocido|||||\n\
         20261228|2026-12-28|diciembre|lunes|2026|53|f|f|\n\
         20261229|2026-12-29|diciembre|martes|2026|53|f|f|\n\
         20261230|2026-12-30|diciembre|miércoles|2026|53|f|f|\n\
         20261231|2026-12-31|diciembre|jueves|2026|53|f|f|\n\
         20270101|2027-01-01|enero|viernes|2026|53|f|t|Año Nuevo\n\
         20270102|2027-01-02|enero|sábado|2026|53|t|f|\n\
         20270103|2027-01-03|enero|domingo|2026|53|t|f|\n\
         20270104|2027-01-04|enero|lunes|2027|1|f|f|"
    );
    assert_eq!(
        psql(&format!(
            "SELECT quarter, day_of_year FROM {table} WHERE date_key = 20270104"
        )),
        "1|4"
    );
    psql(&format!("DROP TABLE {table}"));
}

#[test]
fn a_repeated_natural_key_fails_and_leaves_the_dimension_alone() {
    let p = Project::new();
    p.pipeline(
        "dup",
        r#"
tasks:
  customers:
    extract: {source: csv, path: data/customers.csv}
  dim_cliente:
    depends_on: [customers]
    dimension:
      natural_key: customer_id
      target: {sink: parquet, path: warehouse/dim_cliente.parquet}
"#,
    );
    p.write("data/customers.csv", CUSTOMERS[0]);
    run_at(&p, "dup", "2026-01-01", &[]);
    let before = std::fs::read(p.path().join("warehouse/dim_cliente.parquet")).unwrap();
    p.write(
        "data/customers.csv",
        "customer_id,name,city,segment\n1,Ana,Madrid,retail\n1,Ana B,Madrid,retail\n5,Eva,Cádiz,pyme\n",
    );
    let r = p.run(&["run", "dup"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let run = latest_run(&p);
    let status = p.status(&run).to_string();
    assert!(
        status.contains("natural key (customer_id) more than once: 1 (2 rows)"),
        "{status}"
    );
    let after = std::fs::read(p.path().join("warehouse/dim_cliente.parquet")).unwrap();
    assert_eq!(before, after, "a failed merge must not touch the dimension");
}

#[test]
fn bad_dimension_and_fact_specs_are_located() {
    let p = Project::new();
    let cases = [
        ("dimension:\n      natural_key: id\n      scd: 3\n      target: {sink: parquet, path: d.parquet}", "`scd: 3` is not supported"),
        ("dimension:\n      natural_key: id\n      target: {sink: csv, path: d.csv}", "a dimension lives in `sink: postgres` or `sink: parquet`"),
        ("dimension:\n      natural_key: id\n      tracked: [a]\n      target: {sink: parquet, path: d.parquet}", "`tracked` and `effective` belong to `scd: 2`"),
        ("dimension:\n      natural_key: id\n      target: {sink: postgres, table: t}", "a postgres `target` takes `url` and `table`"),
        ("fact:\n      dimensions: []", "`dimensions` lists no lookups"),
        ("fact:\n      dimensions: [{dimension: d, on: id, as_off: x}]", "as_off"),
        ("fact:\n      dimensions: [{dimension: d, on: id}]\n      target: {sink: parquett, path: x}", "unknown sink `parquett`"),
    ];
    for (i, (body, message)) in cases.iter().enumerate() {
        let name = format!("bad{i}");
        p.pipeline(&name, &format!("tasks:\n  t:\n    {body}\n"));
        let r = p.run(&["validate", &name]);
        assert_eq!(r.code, 2, "{body}: {}{}", r.stdout, r.stderr);
        let text = format!("{}{}", r.stdout, r.stderr);
        assert!(text.contains(message), "{body}: {text}");
        assert!(
            text.contains(&format!("{name}.yaml:")),
            "no location: {text}"
        );
    }
}

#[test]
fn the_star_schema_example_keeps_history_and_never_doubles_facts() {
    let dir = tempfile::tempdir().unwrap();
    crate::data_db::copy_tree(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/star_schema"),
        dir.path(),
    );
    // The example's tables, in a schema of this test's own.
    let schema = unique("star");
    psql(&format!("CREATE SCHEMA {schema}"));
    let url = format!("{PG_URL}?options=-csearch_path%3D{schema}");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(crate::common::bin())
            .arg("--project")
            .arg(dir.path())
            .args(args)
            .env("WAREHOUSE_URL", &url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let sql = |q: &str| psql(&format!("SET search_path TO {schema}; {q}"));
    run(&["run", "seed"]);
    run(&["run", "star_schema", "--logical-date", "2026-02-15"]);
    // Five valid orders (one with quantity 0 quarantined), one of an unknown customer.
    assert_eq!(
        sql("SELECT count(*), sum(CASE WHEN cliente_key = -1 THEN 1 ELSE 0 END) FROM star_fact_ventas"),
        "5|1"
    );
    assert_eq!(sql("SELECT count(*) FROM star_dim_fecha"), "731");
    let rejected =
        std::fs::read_to_string(dir.path().join("results/rejected_orders_2026-02-15.csv")).unwrap();
    assert!(rejected.contains("1006,C001"), "{rejected}");

    // The second batch: C001 moved, C002's e-mail changed, C005 is new, a price changed.
    run(&["run", "seed", "-p", "batch=2"]);
    run(&[
        "run",
        "star_schema",
        "-p",
        "batch=2",
        "--logical-date",
        "2026-03-01",
    ]);
    assert_eq!(
        sql("SELECT customer_id, city, valid_from::date, valid_to::date, is_current FROM star_dim_cliente WHERE customer_id = 'C001' ORDER BY cliente_key"),
        "C001|Madrid|1900-01-01|2026-03-01|f\nC001|Barcelona|2026-03-01|9999-12-31|t"
    );
    assert_eq!(
        sql("SELECT count(*) FROM star_dim_cliente WHERE customer_id = 'C002'"),
        "1",
        "an untracked change makes no version"
    );
    // Every order once; the February order points at Madrid, the March one at Barcelona.
    assert_eq!(
        sql("SELECT count(*), count(DISTINCT order_id) FROM star_fact_ventas"),
        "8|8"
    );
    assert_eq!(
        sql("SELECT f.order_id, c.city FROM star_fact_ventas f JOIN star_dim_cliente c USING (cliente_key) WHERE c.customer_id = 'C001' ORDER BY 1"),
        "1001|Madrid\n1007|Barcelona"
    );
    assert_eq!(
        sql("SELECT price FROM star_dim_producto WHERE sku = 'P-001'"),
        "85.00"
    );
    // Again with the same data: nothing moves.
    let before = sql("SELECT * FROM star_fact_ventas ORDER BY order_id");
    run(&[
        "run",
        "star_schema",
        "-p",
        "batch=2",
        "--logical-date",
        "2026-03-02",
    ]);
    assert_eq!(
        sql("SELECT * FROM star_fact_ventas ORDER BY order_id"),
        before
    );
    assert_eq!(sql("SELECT count(*) FROM star_dim_cliente"), "7");
    psql(&format!("DROP SCHEMA {schema} CASCADE"));
}
