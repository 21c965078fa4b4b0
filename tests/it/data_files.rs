//! File formats end to end through the real binary: JSON documents (with a records path)
//! and NDJSON globs, Parquet in, Excel in (types inferred per column, header on any row)
//! and Excel out (one named sheet per dataset), Spanish decimal commas in CSV; every output
//! read back with pyarrow or openpyxl.

use crate::common::{latest_run, py, Project};

/// The error of task `task` in the newest run.
fn task_error(p: &Project, task: &str) -> String {
    let status = p.status(&latest_run(p));
    status["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task_id"] == task)
        .and_then(|t| t["error"].as_str())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn json_records_path_and_ndjson_glob_to_parquet_with_types() {
    let p = Project::new();
    // The array sits under data.items, after other keys that are skipped.
    p.write(
        "data/pedidos.json",
        r#"{
  "meta": {"total": 2, "pages": [1, 2, 3]},
  "data": {
    "next": null,
    "items": [
      {"id": 1, "fecha": "2024-01-05T10:00:00", "importe": 10.5, "pagado": true,
       "cliente": {"nombre": "José", "pais": "ES"}, "tags": ["a", "b"]},
      {"id": 2, "fecha": "2024-01-06T09:30:00", "importe": 1234.25, "pagado": false,
       "cliente": {"nombre": "Muñoz"}}
    ]
  }
}"#,
    );
    p.write(
        "data/events/2024-01-05.ndjson",
        "{\"ts\": \"2024-01-05 10:00:00\", \"n\": 1, \"user\": {\"name\": \"ana\"}}\n\n{\"ts\": \"2024-01-05 11:00:00\", \"n\": 2, \"score\": 0.5}\n",
    );
    p.write(
        "data/events/2024-01-06.ndjson",
        "{\"ts\": \"2024-01-06 08:00:00\", \"n\": 3, \"user\": {\"name\": \"luis\"}, \"score\": 2}\n",
    );
    p.pipeline(
        "json",
        r#"
tasks:
  pedidos:
    extract:
      source: json
      path: data/pedidos.json
      records: data.items
      columns:
        fecha: timestamp
        importe: decimal(10,2)
  eventos:
    extract:
      source: ndjson
      path: data/events/*.ndjson
      flatten: true
      columns:
        ts: timestamp
  save_pedidos:
    depends_on: [pedidos]
    load: {sink: parquet, path: out/pedidos.parquet}
  save_eventos:
    depends_on: [eventos]
    load: {sink: parquet, path: out/eventos.parquet}
"#,
    );
    let r = p.run(&["run", "json"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let out = py(
        p.path(),
        r#"
import pyarrow.parquet as pq, json
t = pq.read_table('out/pedidos.parquet')
print({f.name: str(f.type) for f in t.schema})
rows = t.to_pylist()
print(rows[0]['fecha'], rows[1]['importe'], rows[0]['pagado'], rows[1]['tags'])
print(json.loads(rows[0]['cliente']) == {"nombre": "José", "pais": "ES"}, json.loads(rows[0]['tags']))
e = pq.read_table('out/eventos.parquet')
print({f.name: str(f.type) for f in e.schema})
print(e.column('n').to_pylist(), e.column('user.name').to_pylist(), e.column('score').to_pylist())
print(e.column('ts').to_pylist()[2])
"#,
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "{'id': 'int64', 'fecha': 'timestamp[us]', 'importe': 'decimal128(10, 2)', 'pagado': 'bool', 'cliente': 'string', 'tags': 'string'}",
        "{out}"
    );
    assert_eq!(lines[1], "2024-01-05 10:00:00 1234.25 True None", "{out}");
    assert_eq!(lines[2], "True ['a', 'b']", "{out}");
    assert_eq!(
        lines[3], "{'ts': 'timestamp[us]', 'n': 'int64', 'user.name': 'string', 'score': 'double'}",
        "{out}"
    );
    assert_eq!(
        lines[4], "[1, 2, 3] ['ana', None, 'luis'] [None, 0.5, 2.0]",
        "{out}"
    );
    assert_eq!(lines[5], "2024-01-06 08:00:00", "{out}");
}

#[test]
fn malformed_json_fails_naming_the_file_and_line() {
    let p = Project::new();
    // A missing comma on line 4.
    p.write(
        "data/bad.json",
        "[\n  {\"id\": 1},\n  {\"id\": 2}\n  {\"id\": 3}\n]\n",
    );
    p.write(
        "data/bad.ndjson",
        "{\"id\": 1}\n{\"id\": 2}\n{\"id\": 3,}\n",
    );
    // A value of another type than the inferred records showed.
    p.write(
        "data/late.ndjson",
        "{\"id\": 1}\n{\"id\": 2}\n{\"id\": \"tres\"}\n",
    );
    for (name, source, file, extra) in [
        ("doc", "json", "data/bad.json", ""),
        ("lines", "ndjson", "data/bad.ndjson", ""),
        (
            "late",
            "ndjson",
            "data/late.ndjson",
            "\n      infer_rows: 2",
        ),
    ] {
        p.pipeline(
            name,
            &format!(
                "tasks:\n  raw:\n    extract:\n      source: {source}\n      path: {file}{extra}\n"
            ),
        );
    }
    let r = p.run(&["run", "doc"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let err = task_error(&p, "raw");
    assert!(err.contains("bad.json: line 4, column 3"), "{err}");
    assert!(err.contains("invalid JSON"), "{err}");

    let r = p.run(&["run", "lines"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let err = task_error(&p, "raw");
    assert!(err.contains("bad.ndjson: line 3, column"), "{err}");

    let r = p.run(&["run", "late"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let err = task_error(&p, "raw");
    assert!(err.contains("late.ndjson: line 3, record 3"), "{err}");
    assert!(
        err.contains("field `id`") && err.contains("infer_rows"),
        "{err}"
    );
}

#[test]
fn json_object_without_records_path_says_which_keys_it_has() {
    let p = Project::new();
    p.write("data/api.json", r#"{"count": 1, "results": [{"id": 1}]}"#);
    p.pipeline(
        "api",
        "tasks:\n  raw:\n    extract:\n      source: json\n      path: data/api.json\n      records: result\n",
    );
    let r = p.run(&["run", "api"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let err = task_error(&p, "raw");
    assert!(err.contains("has no key `result`"), "{err}");
    assert!(err.contains("count, results"), "{err}");
}

#[test]
fn parquet_source_round_trip_keeps_types_and_reads_partitions() {
    let p = Project::new();
    py(
        p.path(),
        r#"
import pyarrow as pa, pyarrow.parquet as pq, datetime, decimal, os
os.makedirs('in', exist_ok=True)
t = pa.table({
  'id': pa.array([1, 2, 3], pa.int32()),
  'importe': pa.array([decimal.Decimal('10.50'), None, decimal.Decimal('-3.25')], pa.decimal128(12, 2)),
  'creado': pa.array([datetime.datetime(2024, 1, 5, 10, 0), datetime.datetime(2024, 1, 6, 0, 0, 0, 123456), None], pa.timestamp('us', tz='UTC')),
  'dia': pa.array([datetime.date(2024, 1, 5), None, datetime.date(2024, 2, 29)], pa.date32()),
  'nombre': ['José', 'Muñoz', None],
  'activo': [True, None, False],
})
pq.write_table(t.slice(0, 2), 'in/part-0.parquet')
pq.write_table(t.slice(2), 'in/part-1.parquet')
pq.write_to_dataset(pa.table({'region': ['norte', 'sur', 'sur'], 'v': [1, 2, 3]}), 'wh', partition_cols=['region'])
"#,
    );
    p.pipeline(
        "pq",
        r#"
tasks:
  raw:
    extract: {source: parquet, path: "in/*.parquet"}
  save:
    depends_on: [raw]
    load: {sink: parquet, path: out/copia.parquet}
  wh:
    extract:
      source: parquet
      path: wh
      select: [v, region]
  save_wh:
    depends_on: [wh]
    load: {sink: parquet, path: out/wh.parquet}
"#,
    );
    let r = p.run(&["run", "pq"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let out = py(
        p.path(),
        r#"
import pyarrow.parquet as pq, pyarrow.dataset as ds
a = ds.dataset('in', format='parquet').to_table().sort_by('id')
b = pq.read_table('out/copia.parquet').sort_by('id')
print(a.schema.equals(b.schema), a.equals(b))
print(b.schema)
w = pq.read_table('out/wh.parquet').sort_by('v')
print(w.column_names, w.column('region').to_pylist(), str(w.schema.field('region').type))
"#,
    );
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("True True"), "{out}");
    assert!(out.contains("creado: timestamp[us, tz=UTC]"), "{out}");
    assert!(out.contains("importe: decimal128(12, 2)"), "{out}");
    assert!(
        out.contains("['v', 'region'] ['norte', 'sur', 'sur'] string"),
        "{out}"
    );
}

#[test]
fn xlsx_source_infers_types_with_the_header_on_row_2() {
    let p = Project::new();
    py(
        p.path(),
        r#"
import openpyxl, datetime, os
os.makedirs('data', exist_ok=True)
wb = openpyxl.Workbook()
wb.active.title = 'Portada'
wb.active['A1'] = 'Este libro tiene los datos en la hoja Datos'
ws = wb.create_sheet('Datos')
ws.append(['Informe de ventas, enero'])
ws.append(['Fecha', 'Cliente', 'Unidades', 'Importe', None, 'Unidades', 'Hora', 'Código'])
ws.append([datetime.date(2024, 1, 5), 'José Muñoz', 3, 10.5, 'x', 1, datetime.datetime(2024, 1, 5, 10, 30), '08001'])
ws.append([datetime.date(2024, 1, 6), None, 12, 3, None, None, datetime.datetime(2024, 1, 6, 0, 0), 28001])
ws.append([None, None, None, None, None, None, None, None])
ws.append([datetime.date(2024, 2, 29), 'Ñandú S.L.', None, 1234.25, None, 7, None, None])
wb.save('data/ventas.xlsx')
"#,
    );
    p.pipeline(
        "xl",
        r#"
tasks:
  raw:
    extract:
      source: xlsx
      path: data/ventas.xlsx
      sheet: Datos
      header_row: 2
      columns:
        Importe: decimal(10,2)
  save:
    depends_on: [raw]
    load: {sink: parquet, path: out/ventas.parquet}
  by_index:
    extract: {source: xlsx, path: data/ventas.xlsx, sheet: 1, range: "A2:C4"}
  save_index:
    depends_on: [by_index]
    load: {sink: parquet, path: out/rango.parquet}
"#,
    );
    let r = p.run(&["run", "xl"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let out = py(
        p.path(),
        r#"
import pyarrow.parquet as pq
t = pq.read_table('out/ventas.parquet')
print({f.name: str(f.type) for f in t.schema})
for row in t.to_pylist():
    print(row)
r = pq.read_table('out/rango.parquet')
print(r.column_names, r.num_rows, r.column('Unidades').to_pylist())
"#,
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "{'Fecha': 'date32[day]', 'Cliente': 'string', 'Unidades': 'int64', 'Importe': 'decimal128(10, 2)', 'column_5': 'string', 'Unidades_2': 'int64', 'Hora': 'timestamp[us]', 'Código': 'string'}",
        "{out}"
    );
    // Three rows: the empty row is skipped; empty cells are nulls.
    assert_eq!(lines.len(), 5, "{out}");
    assert_eq!(
        lines[1],
        "{'Fecha': datetime.date(2024, 1, 5), 'Cliente': 'José Muñoz', 'Unidades': 3, 'Importe': Decimal('10.50'), 'column_5': 'x', 'Unidades_2': 1, 'Hora': datetime.datetime(2024, 1, 5, 10, 30), 'Código': '08001'}",
        "{out}"
    );
    assert_eq!(
        lines[2],
        "{'Fecha': datetime.date(2024, 1, 6), 'Cliente': None, 'Unidades': 12, 'Importe': Decimal('3.00'), 'column_5': None, 'Unidades_2': None, 'Hora': datetime.datetime(2024, 1, 6, 0, 0), 'Código': '28001'}",
        "{out}"
    );
    assert_eq!(
        lines[3],
        "{'Fecha': datetime.date(2024, 2, 29), 'Cliente': 'Ñandú S.L.', 'Unidades': None, 'Importe': Decimal('1234.25'), 'column_5': None, 'Unidades_2': 7, 'Hora': None, 'Código': None}",
        "{out}"
    );
    assert_eq!(
        lines[4], "['Fecha', 'Cliente', 'Unidades'] 2 [3, 12]",
        "{out}"
    );
}

#[test]
fn xlsx_sink_writes_two_datasets_into_named_sheets() {
    let p = Project::new();
    p.write(
        "data/ventas.csv",
        "id,fecha,dia,importe,nota\n1,2024-01-05 10:30:00,2024-01-05,1234.50,pagado\n2,2024-01-06 08:00:00,2024-01-06,3.25,\n",
    );
    p.write("data/clientes.csv", "id,nombre\n1,José\n2,Muñoz\n");
    p.pipeline(
        "report",
        r#"
tasks:
  ventas:
    extract:
      source: csv
      path: data/ventas.csv
      columns: {fecha: timestamp, dia: date, importe: "decimal(10,2)"}
  clientes:
    extract: {source: csv, path: data/clientes.csv}
  informe:
    depends_on: [ventas, clientes]
    load:
      sink: xlsx
      path: "out/informe-{{ ds }}.xlsx"
      from: [ventas, clientes]
      sheets: {ventas: "Ventas 2024"}
"#,
    );
    let r = p.run(&["run", "report"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let out = py(
        p.path(),
        r#"
import openpyxl, glob, os
files = glob.glob('out/*.xlsx')
print(len(files), [f for f in os.listdir('out') if f.startswith('.')])
wb = openpyxl.load_workbook(files[0])
print(wb.sheetnames)
v = wb['Ventas 2024']
print([c.value for c in v[1]], v['A1'].font.b, v.freeze_panes)
print(repr(v['B2'].value), v['B2'].is_date, repr(v['C2'].value), v['C2'].number_format)
print(repr(v['D2'].value), type(v['D2'].value).__name__, v['D2'].number_format, repr(v['A2'].value))
print(repr(v['E3'].value), v.max_row)
c = wb['clientes']
print([[x.value for x in row] for row in c.iter_rows()])
"#,
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1 []", "{out}");
    assert_eq!(lines[1], "['Ventas 2024', 'clientes']", "{out}");
    assert_eq!(
        lines[2], "['id', 'fecha', 'dia', 'importe', 'nota'] True A2",
        "{out}"
    );
    assert_eq!(
        lines[3],
        "datetime.datetime(2024, 1, 5, 10, 30) True datetime.datetime(2024, 1, 5, 0, 0) yyyy-mm-dd",
        "{out}"
    );
    assert_eq!(lines[4], "1234.5 float 0.00 1", "{out}");
    assert_eq!(lines[5], "None 3", "{out}");
    assert_eq!(
        lines[6], "[['id', 'nombre'], [1, 'José'], [2, 'Muñoz']]",
        "{out}"
    );
}

#[test]
fn a_bad_sheet_name_is_a_validate_error_with_its_place() {
    let p = Project::new();
    p.pipeline(
        "report",
        r#"tasks:
  ventas:
    extract: {source: csv, path: data/ventas.csv}
  informe:
    depends_on: [ventas]
    load:
      sink: xlsx
      path: out/informe.xlsx
      sheets:
        ventas: "Ventas/2024"
"#,
    );
    let r = p.run(&["validate", "report"]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("report.yaml:10:17"), "{}", r.stderr);
    assert!(
        r.stderr.contains("sheet name `Ventas/2024` contains `/`"),
        "{}",
        r.stderr
    );
    p.pipeline(
        "long",
        "tasks:\n  v:\n    extract: {source: csv, path: v.csv}\n  x:\n    depends_on: [v]\n    load: {sink: xlsx, path: o.xlsx, sheets: {v: \"Resumen mensual de ventas por región\"}}\n",
    );
    let r = p.run(&["validate", "long"]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("long.yaml:6:"), "{}", r.stderr);
    assert!(r.stderr.contains("Excel allows at most 31"), "{}", r.stderr);
}

#[test]
fn too_many_rows_for_a_sheet_is_an_error_and_the_old_file_stays() {
    let p = Project::new();
    p.write("out/grande.xlsx", "the previous report");
    p.pipeline(
        "big",
        r#"
tasks:
  filas:
    sql: SELECT value AS n FROM generate_series(1, 1048576)
  informe:
    depends_on: [filas]
    load: {sink: xlsx, path: out/grande.xlsx}
"#,
    );
    let r = p.run(&["run", "big"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let err = task_error(&p, "informe");
    assert!(err.contains("more than 1048575 rows"), "{err}");
    assert_eq!(p.read("out/grande.xlsx"), "the previous report");
    let leftovers: Vec<_> = std::fs::read_dir(p.path().join("out"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "grande.xlsx")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn decimal_comma_reads_spanish_numbers_from_a_latin1_csv() {
    let p = Project::new();
    std::fs::create_dir_all(p.path().join("data")).unwrap();
    // Windows-1252 bytes: é = 0xE9, ñ = 0xF1.
    std::fs::write(
        p.path().join("data/facturas.csv"),
        b"id;cliente;importe;precio;unidades\n1;Jos\xe9;1.234,50;12,5;1.000\n2;Mu\xf1oz;-0,75;3;2\n3;Pe\xf1a;;0,125;\n",
    )
    .unwrap();
    std::fs::write(
        p.path().join("data/mal.csv"),
        b"id;importe\n1;1,50\n2;12,5,0\n",
    )
    .unwrap();
    p.pipeline(
        "facturas",
        r#"
tasks:
  raw:
    extract:
      source: csv
      path: data/facturas.csv
      delimiter: ";"
      encoding: latin1
      decimal_comma: true
      columns:
        importe: decimal(10,2)
        precio: double
        unidades: int
  save:
    depends_on: [raw]
    load: {sink: parquet, path: out/facturas.parquet}
"#,
    );
    let r = p.run(&["run", "facturas"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let out = py(
        p.path(),
        r#"
import pyarrow.parquet as pq
t = pq.read_table('out/facturas.parquet')
print(t.schema.field('importe').type, t.schema.field('precio').type, t.schema.field('unidades').type)
print(t.column('importe').to_pylist())
print(t.column('precio').to_pylist(), t.column('unidades').to_pylist(), t.column('cliente').to_pylist())
"#,
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "decimal128(10, 2) double int64", "{out}");
    assert_eq!(
        lines[1], "[Decimal('1234.50'), Decimal('-0.75'), None]",
        "{out}"
    );
    assert_eq!(
        lines[2], "[12.5, 3.0, 0.125] [1000, 2, None] ['José', 'Muñoz', 'Peña']",
        "{out}"
    );

    p.pipeline(
        "mal",
        "tasks:\n  raw:\n    extract:\n      source: csv\n      path: data/mal.csv\n      delimiter: \";\"\n      decimal_comma: true\n      columns: {importe: \"decimal(10,2)\"}\n",
    );
    let r = p.run(&["run", "mal"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let err = task_error(&p, "raw");
    assert!(err.contains("mal.csv: line 3, column `importe`"), "{err}");
    assert!(err.contains("`12,5,0`"), "{err}");
}

#[test]
fn dictionary_columns_pass_through_datasets_and_datasets_read_back_as_arrow_files() {
    // pandas writes categorical columns as Parquet dictionaries, with a different dictionary
    // in each row group; a dataset stores the values.
    let p = Project::new();
    py(
        p.path(),
        r#"
import pyarrow as pa, pyarrow.parquet as pq, os
os.makedirs('in', exist_ok=True)
regions = pa.array(['norte', 'sur'] * 3 + ['este', 'oeste'] * 3).dictionary_encode()
t = pa.table({'id': pa.array(range(12), pa.int64()), 'region': regions})
pq.write_table(t, 'in/cat.parquet', row_group_size=3)
"#,
    );
    p.pipeline(
        "cat",
        r#"
tasks:
  raw:
    extract: {source: parquet, path: in/cat.parquet}
  q:
    depends_on: [raw]
    sql: SELECT region, COUNT(*) AS n, SUM(id) AS s FROM raw GROUP BY region
  out:
    depends_on: [q]
    load: {sink: csv, path: out/regions.csv}
"#,
    );
    let r = p.run(&["run", "cat"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let id = latest_run(&p);
    let out = py(
        p.path(),
        &format!(
            r#"
import csv, pyarrow.dataset as ds
rows = sorted((r['region'], r['n'], r['s']) for r in csv.DictReader(open('out/regions.csv')))
print(rows)
raw = ds.dataset('.cauce/data/{id}/raw', format='arrow').to_table()
print(raw.num_rows, raw.schema.field('region').type, sorted(set(raw.column('region').to_pylist())))
"#
        ),
    );
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some("[('este', '3', '24'), ('norte', '3', '6'), ('oeste', '3', '27'), ('sur', '3', '9')]"),
        "{out}"
    );
    assert_eq!(
        lines.next(),
        Some("12 string ['este', 'norte', 'oeste', 'sur']"),
        "{out}"
    );
}
