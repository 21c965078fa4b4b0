//! `validate` and `reconcile` end to end through the real binary: every rule's three
//! outcomes (fail, quarantine, warn), population rules, the validation report checked
//! against what DuckDB counts in the outputs, `unique` keeping first or last, referential
//! integrity, named outputs read by `load` and `sql`, and reconciliation with both merges.

use crate::common::{latest_run, py, Project};
use serde_json::Value;

const ORDERS: &str = "id,customer_id,qty,price,status,email
1,10,5,1.50,paid,a@x.com
2,11,-1,2.00,paid,b@x.com
3,10,3,abc,shipped,c@x.com
4,99,7,3.00,lost,d@x.com
5,10,2,1.00,paid,bad
6,11,,4.00,paid,f@x.com
7,10,1,1.00,shipped,g@x.com
";

const CUSTOMERS: &str = "id,name\n10,Ana\n11,Luis\n";

/// A project with the orders and customers CSVs.
fn project() -> Project {
    let p = Project::new();
    p.write("data/orders.csv", ORDERS);
    p.write("data/customers.csv", CUSTOMERS);
    p
}

/// A pipeline: orders and customers extracted, `check` validating orders with `rules`
/// (YAML lines at the validate's indentation), its valid rows and its quarantine loaded
/// to Parquet.
fn pipeline(rules: &str) -> String {
    let rules: String = rules
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("      {}\n", l.trim()))
        .collect();
    format!(
        r#"
tasks:
  orders:
    extract: {{source: csv, path: data/orders.csv}}
  customers:
    extract: {{source: csv, path: data/customers.csv}}
  check:
    depends_on: [orders, customers]
    validate:
      from: orders
{rules}  valid:
    depends_on: [check]
    load: {{sink: parquet, path: out/valid.parquet}}
  bad:
    depends_on: [check]
    load: {{sink: parquet, path: out/bad.parquet, from: check@quarantine}}
"#
    )
}

/// The output value of a task in the run's report (`cauce report RUN`).
fn output(p: &Project, run: &str, task: &str) -> Value {
    let r = p.run(&["report", run]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    v["results"][task].clone()
}

/// The entry of one validation in a validate report.
fn validation<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["validations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["validation"] == name)
        .unwrap_or_else(|| panic!("no `{name}` in {report}"))
}

fn run_ok(p: &Project, name: &str) -> String {
    let r = p.run(&["run", name]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    latest_run(p)
}

#[test]
fn quarantine_moves_exactly_the_bad_rows_with_reasons_and_the_report_matches_the_data() {
    let p = project();
    p.pipeline(
        "q",
        &pipeline(
            r#"
            types: {qty: int, price: "decimal(10,2)"}
            not_null: [qty]
            range: {qty: {min: 0, max: 100}}
            allowed: {status: [paid, shipped]}
            pattern: {email: "^[^@]+@[^@]+$"}
            references: {customer_id: {dataset: customers, column: id}}
            "#,
        ),
    );
    let run = run_ok(&p, "q");
    let out = py(
        p.path(),
        r#"
import duckdb, pyarrow.parquet as pq
print(duckdb.sql("select list(id order by id) from 'out/valid.parquet'").fetchall()[0][0])
for r in duckdb.sql("select _row, id, reason from 'out/bad.parquet' order by _row").fetchall():
    print(r)
print(pq.read_table('out/valid.parquet').schema.field('price').type)
print(duckdb.sql("select count(*) from 'out/valid.parquet'").fetchall()[0][0], duckdb.sql("select count(*) from 'out/bad.parquet'").fetchall()[0][0])
"#,
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "[1, 7]", "{out}");
    assert_eq!(lines[1], "(2, 2, 'range(qty)')", "{out}");
    assert_eq!(lines[2], "(3, 3, 'types(price)')", "{out}");
    assert_eq!(
        lines[3], "(4, 4, 'allowed(status); references(customer_id)')",
        "{out}"
    );
    assert_eq!(lines[4], "(5, 5, 'pattern(email)')", "{out}");
    assert_eq!(lines[5], "(6, 6, 'not_null(qty)')", "{out}");
    assert_eq!(
        lines[6], "decimal128(10, 2)",
        "the valid rows are typed: {out}"
    );
    // The report counts what DuckDB counts.
    let check = output(&p, &run, "check");
    let report = &check["output"];
    let counts: Vec<u64> = lines[7].split(' ').map(|n| n.parse().unwrap()).collect();
    assert_eq!(report["source"], "orders");
    assert_eq!(report["original_rows"], 7);
    assert_eq!(report["final_rows"], counts[0]);
    assert_eq!(report["rows_quarantined"], counts[1]);
    assert_eq!(check["metrics"]["rows_in"], 7);
    assert_eq!(check["metrics"]["rows_out"], counts[0]);
    assert_eq!(check["metrics"]["rows_rejected"], counts[1]);
    let types = validation(report, "types");
    assert_eq!(types["status"], "failed");
    assert_eq!(types["violations"], 1);
    assert_eq!(types["columns"][1]["examples"][0]["row"], 3);
    assert_eq!(types["columns"][1]["examples"][0]["value"], "abc");
    assert_eq!(validation(report, "references")["violations"], 1);
    assert_eq!(
        validation(report, "range")["issues"][0],
        "qty: 1 values outside [0, 100] (row 2: -1)"
    );
    // The same report is written beside the run's report.
    let file = p.read(&format!(".cauce/reports/{run}/check.validation.json"));
    let saved: Value = serde_json::from_str(&file).unwrap();
    assert_eq!(&saved, report);
}

#[test]
fn a_failing_rule_stops_the_task_naming_rule_column_count_and_examples() {
    let p = project();
    let cases = [
        ("types: {price: \"decimal(10,2)\"}\non_fail: {types: fail}", "rule `types` failed on column `price`: 1 values that are not decimal(10,2) (row 3: abc)"),
        ("not_null: [qty]\non_fail: {not_null: fail}", "rule `not_null` failed on column `qty`: 1 null values (row 6: null)"),
        ("range: {qty: {min: 0}}\non_fail: {range: fail}", "rule `range` failed on column `qty`: 1 values outside [0, ] (row 2: -1)"),
        ("allowed: {status: [paid, shipped]}\non_fail: {allowed: fail}", "rule `allowed` failed on column `status`: 1 values not in [paid, shipped] (row 4: lost)"),
        ("pattern: {email: \"^[^@]+@[^@]+$\"}\non_fail: {pattern: fail}", "rule `pattern` failed on column `email`: 1 values not matching ^[^@]+@[^@]+$ (row 5: bad)"),
        ("unique: {keys: [customer_id], keep: none}\non_fail: {unique: fail}", "rule `unique` failed on column `customer_id`: 6 rows with a duplicated key (row 1: 10, row 2: 11"),
        ("references: {customer_id: {dataset: customers, column: id}}\non_fail: {references: fail}", "rule `references` failed on column `customer_id`: 1 values not found in customers.id (row 4: 99)"),
        ("required_columns: [id, discount]", "rule `required_columns` failed: the dataset of `orders` has no column `discount`"),
        ("row_count: {min: 10}", "rule `row_count` failed: 7 valid rows, outside [10, ]"),
    ];
    for (i, (rules, expected)) in cases.iter().enumerate() {
        let name = format!("f{i}");
        p.pipeline(&name, &pipeline(rules));
        let r = p.run(&["run", &name]);
        assert_ne!(r.code, 0, "{rules}: {}{}", r.stdout, r.stderr);
        let run = latest_run(&p);
        let check = output(&p, &run, "check");
        assert_eq!(check["status"], "failed", "{rules}");
        let error = check["error"].as_str().unwrap();
        assert!(
            error.contains(expected),
            "{rules}\nexpected: {expected}\ngot: {error}"
        );
        // Not retried: bad data does not get better.
        assert_eq!(check["attempts"].as_array().unwrap().len(), 1);
        assert_eq!(output(&p, &run, "valid")["status"], "skipped");
        assert!(!p.path().join("out/valid.parquet").exists());
    }
}

#[test]
fn warn_keeps_every_row_and_the_report_says_warning() {
    let p = project();
    p.pipeline(
        "w",
        &pipeline(
            r#"
            types: {price: "decimal(10,2)"}
            not_null: [qty]
            unique: {keys: [customer_id]}
            range: {qty: {min: 0}}
            allowed: {status: [paid, shipped]}
            pattern: {email: "^[^@]+@[^@]+$"}
            references: {customer_id: {dataset: customers, column: id}}
            row_count: {max: 3}
            on_fail: {types: warn, not_null: warn, unique: warn, range: warn, allowed: warn, pattern: warn, references: warn, row_count: warn}
            "#,
        ),
    );
    let run = run_ok(&p, "w");
    let out = py(
        p.path(),
        "import duckdb\nprint(duckdb.sql(\"select count(*), count(price) from 'out/valid.parquet'\").fetchall()[0], duckdb.sql(\"select count(*) from 'out/bad.parquet'\").fetchall()[0][0])",
    );
    // Every row stays; the value that is not a decimal becomes null in the typed column.
    assert_eq!(out.trim(), "(7, 6) 0", "{out}");
    let report = output(&p, &run, "check")["output"].clone();
    for rule in [
        "types",
        "not_null",
        "unique",
        "range",
        "allowed",
        "pattern",
        "references",
        "row_count",
    ] {
        let v = validation(&report, rule);
        assert_eq!(v["status"], "warning", "{rule}: {v}");
        assert_eq!(v["action"], "warn");
        assert!(!v["issues"].as_array().unwrap().is_empty(), "{rule}: {v}");
    }
    assert_eq!(validation(&report, "unique")["violations"], 4);
    assert_eq!(report["final_rows"], 7);
}

#[test]
fn populations_fill_nulls_and_the_report_counts_them() {
    let p = Project::new();
    p.write(
        "data/clientes.csv",
        "codigo,nombre,estado,alta\nC1,Ana,,2024-01-01\n,Luis,inactivo,\n,Eva,,\nC4,Sol,activo,2024-01-03\n",
    );
    p.pipeline(
        "pop",
        r#"
tasks:
  raw:
    extract: {source: csv, path: data/clientes.csv, columns: {alta: date}}
  check:
    depends_on: [raw]
    validate:
      defaults: {estado: activo, moneda: USD}
      default_dates: {alta: logical_date}
      generate_ids: {column: codigo, prefix: "AUTO_"}
      not_null: [codigo, estado]
      unique: {keys: [codigo]}
  save:
    depends_on: [check]
    load: {sink: csv, path: out/clientes.csv}
"#,
    );
    let r = p.run(&["run", "pop", "--logical-date", "2024-02-01"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let csv = p.read("out/clientes.csv");
    assert_eq!(
        csv,
        "codigo,nombre,estado,alta,moneda\nC1,Ana,activo,2024-01-01,USD\nAUTO_2,Luis,inactivo,2024-02-01,USD\nAUTO_3,Eva,activo,2024-02-01,USD\nC4,Sol,activo,2024-01-03,USD\n"
    );
    let report = output(&p, &latest_run(&p), "check")["output"].clone();
    assert_eq!(report["original_rows"], 4);
    assert_eq!(report["final_rows"], 4);
    let pops = report["populations"].as_array().unwrap();
    assert_eq!(pops[0]["population"], "defaults");
    assert_eq!(pops[0]["status"], "completed");
    assert_eq!(
        pops[0]["fields_populated"],
        serde_json::json!(["estado: 2 values", "moneda: 4 values"])
    );
    assert_eq!(
        pops[1]["fields_populated"],
        serde_json::json!(["alta: 2 values"])
    );
    assert_eq!(
        pops[2]["fields_populated"],
        serde_json::json!(["codigo: 2 values"])
    );
    // The nulls the populations filled make not_null `fixed`, as in seed 004.
    let nn = validation(&report, "not_null");
    assert_eq!(nn["status"], "fixed", "{nn}");
    assert_eq!(
        nn["issues"],
        serde_json::json!(["codigo: 2 values populated", "estado: 2 values populated"])
    );
    // Generated ids are the same on another run of the same data.
    assert_eq!(p.run(&["run", "pop"]).code, 0);
    assert!(p.read("out/clientes.csv").contains("AUTO_2,Luis"));
}

#[test]
fn unique_keeps_the_first_or_the_last_row_of_a_key() {
    let p = Project::new();
    p.write(
        "data/p.csv",
        "sku,version,price\nA,1,10\nB,1,20\nA,2,11\nA,3,12\nB,2,-5\n",
    );
    for keep in ["first", "last"] {
        p.pipeline(
            keep,
            &format!(
                r#"
tasks:
  raw:
    extract: {{source: csv, path: data/p.csv}}
  check:
    depends_on: [raw]
    validate:
      unique: {{keys: [sku], keep: {keep}}}
      range: {{price: {{min: 0}}}}
  save:
    depends_on: [check]
    load: {{sink: csv, path: out/{keep}.csv}}
  dups:
    depends_on: [check]
    load: {{sink: csv, path: out/{keep}_dups.csv, from: check@quarantine}}
"#
            ),
        );
        let run = run_ok(&p, keep);
        let report = output(&p, &run, "check")["output"].clone();
        assert_eq!(validation(&report, "unique")["status"], "fixed");
        assert_eq!(validation(&report, "unique")["violations"], 2);
        let _ = run;
    }
    // B's version 2 breaks the range, so B's version 1 stays under either keep.
    assert_eq!(
        p.read("out/first.csv"),
        "sku,version,price\nA,1,10\nB,1,20\n"
    );
    assert_eq!(
        p.read("out/last.csv"),
        "sku,version,price\nB,1,20\nA,3,12\n"
    );
    assert_eq!(
        p.read("out/last_dups.csv"),
        "_row,sku,version,price,reason\n1,A,1,10,unique(sku)\n3,A,2,11,unique(sku)\n5,B,2,-5,range(price)\n"
    );
}

#[test]
fn references_check_against_a_second_dataset_that_must_be_upstream() {
    let p = project();
    p.pipeline(
        "refs",
        r#"
tasks:
  orders:
    extract: {source: csv, path: data/orders.csv}
  customers:
    extract: {source: csv, path: data/customers.csv}
  check:
    depends_on: [orders, customers]
    validate:
      from: orders
      references: {customer_id: {dataset: customers, column: id}}
  orphans:
    depends_on: [check]
    sql: SELECT customer_id, reason FROM "check@quarantine"
  save:
    depends_on: [orphans]
    load: {sink: csv, path: out/orphans.csv}
"#,
    );
    run_ok(&p, "refs");
    assert_eq!(
        p.read("out/orphans.csv"),
        "customer_id,reason\n99,references(customer_id)\n"
    );
    // A referenced dataset not in depends_on is refused before anything runs.
    p.pipeline(
        "norefs",
        r#"
tasks:
  orders:
    extract: {source: csv, path: data/orders.csv}
  customers:
    extract: {source: csv, path: data/customers.csv}
  check:
    depends_on: [orders]
    validate:
      references: {customer_id: {dataset: customers, column: id}}
"#,
    );
    let r = p.run(&["validate", "norefs"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stdout.contains("`customers`") || r.stderr.contains("`customers`"),
        "{}{}",
        r.stdout,
        r.stderr
    );
}

#[test]
fn freshness_is_measured_from_the_logical_date() {
    let p = Project::new();
    p.write(
        "data/e.csv",
        "id,updated_at\n1,2024-03-01 10:00:00\n2,2024-03-04 08:00:00\n",
    );
    for (name, action) in [("fresh_fail", "fail"), ("fresh_warn", "warn")] {
        p.pipeline(
            name,
            &format!(
                r#"
tasks:
  raw:
    extract: {{source: csv, path: data/e.csv, columns: {{updated_at: timestamp}}}}
  check:
    depends_on: [raw]
    validate:
      freshness: {{column: updated_at, max_age: 2d}}
      on_fail: {{freshness: {action}}}
"#
            ),
        );
    }
    // Two days after the newest value: fresh.
    let r = p.run(&["run", "fresh_fail", "--logical-date", "2024-03-05"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let report = output(&p, &latest_run(&p), "check")["output"].clone();
    assert_eq!(validation(&report, "freshness")["status"], "passed");
    assert_eq!(
        validation(&report, "freshness")["newest"],
        "2024-03-04T08:00:00"
    );
    // Ten days later: stale.
    let r = p.run(&["run", "fresh_fail", "--logical-date", "2024-03-14"]);
    assert_ne!(r.code, 0);
    let check = output(&p, &latest_run(&p), "check");
    let error = check["error"].as_str().unwrap();
    assert!(
        error.contains(
            "rule `freshness` failed on column `updated_at`: newest value 2024-03-04T08:00:00"
        ),
        "{error}"
    );
    let r = p.run(&["run", "fresh_warn", "--logical-date", "2024-03-14"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let report = output(&p, &latest_run(&p), "check")["output"].clone();
    assert_eq!(validation(&report, "freshness")["status"], "warning");
}

#[test]
fn spec_mistakes_are_located_errors() {
    let p = project();
    for (rules, expected) in [
        ("not_nul: [id]", "unknown key `not_nul`"),
        (
            "not_null: [id]\non_fail: {row_count: quarantine}",
            "can `fail` or `warn`, not `quarantine`",
        ),
        ("not_null: [id]\non_fail: {not_nulls: warn}", "not a rule"),
        ("types: {price: decimal(10,2)}", "quote it"),
        ("unique: {keys: [id], keep: middle}", "middle"),
        ("freshness: {column: x, max_age: soon}", "invalid duration"),
    ] {
        p.pipeline("bad", &pipeline(rules));
        let r = p.run(&["validate", "bad"]);
        let text = format!("{}{}", r.stdout, r.stderr);
        assert_ne!(r.code, 0, "{rules}: {text}");
        assert!(text.contains(expected), "{rules}: {text}");
        assert!(text.contains("bad.yaml:"), "located: {text}");
    }
}

const DB: &str = "id,name,price,stock\n1,A,1.0,5\n2,B,2.0,6\n3,C,3.0,7\n4,D,4.0,8\n";
const FILE: &str = "id,name,price,note\n2,B,2.5,x\n3,C,3.0,y\n4,DD,4.0,z\n5,E,5.0,w\n";

fn reconcile_pipeline(merge: &str) -> String {
    format!(
        r#"
tasks:
  db:
    extract: {{source: csv, path: data/db.csv}}
  file:
    extract: {{source: csv, path: data/file.csv}}
  rec:
    depends_on: [db, file]
    reconcile:
      left: db
      right: file
      keys: [id]
      {merge}
  left:
    depends_on: [rec]
    load: {{sink: csv, path: out/only_left.csv, from: rec@only_left}}
  right:
    depends_on: [rec]
    load: {{sink: csv, path: out/only_right.csv, from: rec@only_right}}
  diff:
    depends_on: [rec]
    load: {{sink: csv, path: out/different.csv, from: rec@different}}
"#
    )
}

/// The three outputs of reconciling `DB` with `FILE`: a row only on each side, and a price
/// and a name that differ.
fn assert_differences(p: &Project) {
    assert_eq!(
        p.read("out/only_left.csv"),
        "id,name,price,stock\n1,A,1.0,5\n"
    );
    assert_eq!(
        p.read("out/only_right.csv"),
        "id,name,price,note\n5,E,5.0,w\n"
    );
    assert_eq!(
        p.read("out/different.csv"),
        "id,differs,name_left,name_right,price_left,price_right\n2,price,B,B,2.0,2.5\n4,name,D,DD,4.0,4.0\n"
    );
}

#[test]
fn reconcile_finds_rows_only_left_only_right_and_different_columns() {
    let p = Project::new();
    p.write("data/db.csv", DB);
    p.write("data/file.csv", FILE);
    p.pipeline("rec", &reconcile_pipeline(""));
    let run = run_ok(&p, "rec");
    assert_differences(&p);
    let rec = output(&p, &run, "rec");
    let report = &rec["output"];
    assert_eq!(report["columns"], serde_json::json!(["name", "price"]));
    assert_eq!(report["left_rows"], 4);
    assert_eq!(report["right_rows"], 4);
    assert_eq!(report["matched"], 3);
    assert_eq!(report["only_left"], 1);
    assert_eq!(report["only_right"], 1);
    assert_eq!(report["different"], 2);
    assert_eq!(report["symmetric"], false);
    assert_eq!(report["examples"]["different"][1]["differs"], "name");
    assert_eq!(report["examples"]["only_right"][0]["id"], "5");
    // Comparing only `name` leaves the price change out.
    p.pipeline(
        "names",
        &reconcile_pipeline("columns: [name]").replace("out/", "out2/"),
    );
    run_ok(&p, "names");
    assert_eq!(
        p.read("out2/different.csv"),
        "id,differs,name_left,name_right\n4,name,D,DD\n"
    );
}

#[test]
fn merge_takes_the_priority_side_and_keeps_every_key_once() {
    let p = Project::new();
    p.write("data/db.csv", DB);
    p.write("data/file.csv", FILE);
    for priority in ["left", "right"] {
        let yaml = reconcile_pipeline(&format!("merge: {{priority: {priority}}}")).replace(
            "  left:\n",
            &format!(
                "  merged:\n    depends_on: [rec]\n    load: {{sink: parquet, path: out/merged_{priority}.parquet}}\n  left:\n"
            ),
        );
        p.pipeline(priority, &yaml);
        let run = run_ok(&p, priority);
        let rec = output(&p, &run, "rec");
        assert_eq!(rec["output"]["merged_rows"], 5);
        assert_eq!(rec["metrics"]["rows_out"], 5);
    }
    let out = py(
        p.path(),
        r#"
import duckdb
for side in ['left', 'right']:
    print(duckdb.sql(f"select id, name, price, stock, note from 'out/merged_{side}.parquet' order by id").fetchall())
"#,
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "[(1, 'A', 1.0, 5, None), (2, 'B', 2.0, 6, 'x'), (3, 'C', 3.0, 7, 'y'), (4, 'D', 4.0, 8, 'z'), (5, 'E', 5.0, None, 'w')]"
    );
    assert_eq!(
        lines[1],
        "[(1, 'A', 1.0, 5, None), (2, 'B', 2.5, 6, 'x'), (3, 'C', 3.0, 7, 'y'), (4, 'DD', 4.0, 8, 'z'), (5, 'E', 5.0, None, 'w')]"
    );
}

#[test]
fn reconcile_a_postgres_table_with_a_csv_export() {
    use crate::data_db::{psql, unique, PG_URL};
    // Seed 004's symmetry check: the database side read from the real PostgreSQL.
    let table = unique("rec_db");
    psql(&format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, name text, price double precision, stock int); \
         INSERT INTO {table} VALUES (1,'A',1.0,5),(2,'B',2.0,6),(3,'C',3.0,7),(4,'D',4.0,8)"
    ));
    let p = Project::new();
    p.write("data/file.csv", FILE);
    p.pipeline(
        "rec",
        &reconcile_pipeline("").replace(
            "extract: {source: csv, path: data/db.csv}",
            &format!("extract: {{source: postgres, url: \"{PG_URL}\", table: {table}}}"),
        ),
    );
    let run = run_ok(&p, "rec");
    assert_differences(&p);
    let report = &output(&p, &run, "rec")["output"];
    assert_eq!(
        (
            &report["only_left"],
            &report["only_right"],
            &report["different"]
        ),
        (&Value::from(1), &Value::from(1), &Value::from(2))
    );
    psql(&format!("DROP TABLE {table}"));
}
