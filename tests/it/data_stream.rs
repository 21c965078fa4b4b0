//! Streaming between data tasks: a `sql` or `load` starts beside the extract or query that
//! feeds it and takes its batches as they are written, while every task boundary stays a
//! checkpoint (an extract's dataset is written whole; a query read live downstream is kept
//! as a view, which a retried task reads by running the query again, unless the query
//! would not give the same rows twice or says `materialize: true`); nothing downstream
//! commits before its upstream succeeded; a failure upstream skips what streamed from it
//! and leaves targets as they were; queries that read a live input twice or not at all do
//! not stall; `data.streaming: false` turns it off.

use crate::common::{latest_run, py, wait_with_limit, Project, Run};
use std::time::Duration;

/// `rows` rows of `id,v` (v = id % 7), then `tail` verbatim.
fn numbers(rows: usize, tail: &str) -> String {
    let mut s = String::from("id,v\n");
    for i in 0..rows {
        s.push_str(&format!("{i},{}\n", i % 7));
    }
    s.push_str(tail);
    s
}

/// A project whose batches are small, so that a stream holds many of them.
fn project(extra: &str) -> Project {
    let p = Project::new();
    p.write(
        "cauce.yaml",
        &format!("name: test\nkill_grace: 1s\ndata:\n  batch_size: 1000\n{extra}"),
    );
    p
}

fn run(p: &Project, args: &[&str]) -> Run {
    wait_with_limit(p.spawn(args), Duration::from_secs(120))
}

fn task<'a>(status: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    status["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task_id"] == id)
        .unwrap_or_else(|| panic!("no task {id} in {status}"))
}

fn times(status: &serde_json::Value, id: &str) -> (i64, i64) {
    let t = task(status, id);
    (
        t["started_at"].as_i64().unwrap(),
        t["ended_at"].as_i64().unwrap(),
    )
}

const CHAIN: &str = r#"
tasks:
  raw:
    extract: {source: csv, path: data/n.csv, columns: {v: int}}
  q:
    depends_on: [raw]
    sql: SELECT id, v * 2 AS w FROM raw WHERE v <> 0
  save:
    depends_on: [q]
    load: {sink: parquet, path: out/n.parquet}
"#;

/// The `.arrow` files and whether there is a `view.json` in task `task`'s dataset folder.
fn dataset_files(p: &Project, run: &str, task: &str) -> (usize, bool) {
    let dir = p.path().join(".cauce/data").join(run).join(task);
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    (
        names.iter().filter(|n| n.ends_with(".arrow")).count(),
        names.iter().any(|n| n == "view.json"),
    )
}

#[test]
fn a_chain_streams_writes_the_extract_and_keeps_the_query_as_a_view() {
    let p = project("");
    p.write("data/n.csv", &numbers(100_000, ""));
    p.pipeline("n", CHAIN);
    let r = run(&p, &["run", "n"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let id = latest_run(&p);
    let s = p.status(&id);
    // All three ran at once: each consumer started before its producer ended.
    let (raw_start, raw_end) = times(&s, "raw");
    let (q_start, q_end) = times(&s, "q");
    let (save_start, _) = times(&s, "save");
    assert!(q_start < raw_end && save_start < q_end, "{s}");
    assert!(raw_start <= q_start, "{s}");
    // 100,000 rows, 1/7 of them with v = 0.
    let kept = (0..100_000).filter(|i| i % 7 != 0).count() as u64;
    assert_eq!(task(&s, "raw")["metrics"]["rows_out"], 100_000, "{s}");
    assert_eq!(task(&s, "q")["metrics"]["rows_out"], kept, "{s}");
    assert_eq!(task(&s, "save")["metrics"]["rows_out"], kept, "{s}");
    // The query's rows went live into the load: its dataset is its query, not its rows.
    assert_eq!(dataset_files(&p, &id, "q"), (0, true));
    let log = p.run(&["logs", &id, "q"]).stdout;
    assert!(log.contains("kept as a view"), "{log}");
    let out = py(
        p.path(),
        &format!(
            r#"
import pyarrow.parquet as pq, pyarrow.dataset as ds
t = pq.read_table('out/n.parquet')
print(t.num_rows, sum(t.column('w').to_pylist()), str(t.schema.field('w').type))
print(ds.dataset('.cauce/data/{id}/raw', format='arrow').count_rows())
"#
        ),
    );
    let want: i64 = (0..100_000i64).map(|i| (i % 7) * 2).sum();
    assert_eq!(out.trim(), format!("{kept} {want} int64\n100000"), "{out}");
}

/// A load fails after two queries streamed into it (the second with a bound `$min` and a
/// templated param); `cauce retry` runs the load alone, which reads the second query's view,
/// which reads the first's: the same rows as a run that never failed.
#[test]
fn a_retried_load_reads_views_over_views_with_their_params() {
    let p = project("");
    p.write("data/n.csv", &numbers(60_000, ""));
    // `out/n.csv` is a folder, so the load reads every row and then cannot put its file
    // there, until the folder goes.
    p.write("out/n.csv/in-the-way", "");
    p.pipeline(
        "n",
        r#"
params: {min: 2, label: low}
tasks:
  raw:
    extract: {source: csv, path: data/n.csv, columns: {v: int}}
  wide:
    depends_on: [raw]
    sql: SELECT id, v, v * 10 AS w, {{ params.label }} AS label FROM raw WHERE id % 2 = 0
  narrow:
    depends_on: [wide]
    sql: SELECT label, v, count(*) AS n, sum(w) AS w FROM wide WHERE v >= $min GROUP BY label, v
  save:
    depends_on: [narrow]
    load: {sink: csv, path: out/n.csv}
"#,
    );
    let r = run(&p, &["run", "n", "-p", "min=4", "-p", "label=it's"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let id = latest_run(&p);
    let states = p.task_states(&id);
    assert_eq!(states["narrow"], "success", "{states:?}");
    assert_eq!(states["save"], "failed", "{states:?}");
    assert_eq!(dataset_files(&p, &id, "wide"), (0, true));
    assert_eq!(dataset_files(&p, &id, "narrow"), (0, true));
    std::fs::remove_dir_all(p.path().join("out/n.csv")).unwrap();
    let r = run(&p, &["retry", &id]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let s = p.status(&id);
    assert_eq!(task(&s, "save")["metrics"]["rows_out"], 3, "{s}");
    let mut want = String::from("label,v,n,w\n");
    for v in 4..7u64 {
        let ids = (0..60_000u64).filter(|i| i % 2 == 0 && i % 7 == v);
        let n = ids.count() as u64;
        want.push_str(&format!("it's,{v},{n},{}\n", n * v * 10));
    }
    let mut got: Vec<String> = p.read("out/n.csv").lines().map(String::from).collect();
    got[1..].sort();
    assert_eq!(got.join("\n") + "\n", want);
}

/// A chain of 18 queries streaming one into the next: views read through at most 16
/// others, so the 17th query writes its rows (running its query again over the 16th view),
/// the 18th is a view over those rows again, and a retried load reads through all of it.
#[test]
fn a_chain_deeper_than_views_may_read_writes_rows_every_seventeenth_query() {
    let p = project("");
    p.write("data/n.csv", &numbers(20_000, ""));
    p.write("out/n.csv/in-the-way", "");
    let mut yaml = String::from(
        "tasks:\n  q0:\n    extract: {source: csv, path: data/n.csv, columns: {v: int}}\n",
    );
    for i in 1..=18 {
        yaml.push_str(&format!(
            "  q{i}:\n    depends_on: [q{j}]\n    sql: SELECT id, v + 1 AS v FROM q{j}\n",
            j = i - 1
        ));
    }
    yaml.push_str("  save:\n    depends_on: [q18]\n    load: {sink: csv, path: out/n.csv}\n");
    p.pipeline("n", &yaml);
    let r = run(&p, &["run", "n"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let id = latest_run(&p);
    let states = p.task_states(&id);
    assert_eq!(states["q18"], "success", "{states:?}");
    assert_eq!(states["save"], "failed", "{states:?}");
    let s = p.status(&id);
    for i in 1..=18 {
        let q = format!("q{i}");
        let (files, view) = dataset_files(&p, &id, &q);
        assert_eq!((files > 0, view), (i == 17, i != 17), "{q}");
        assert_eq!(task(&s, &q)["metrics"]["rows_out"], 20_000, "{q}: {s}");
    }
    let log = p.run(&["logs", &id, "q17"]).stdout;
    assert!(log.contains("more than 16 views"), "{log}");
    std::fs::remove_dir_all(p.path().join("out/n.csv")).unwrap();
    let r = run(&p, &["retry", &id]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let got: i64 = p
        .read("out/n.csv")
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse::<i64>().unwrap())
        .sum();
    let want: i64 = (0..20_000i64).map(|i| i % 7 + 18).sum();
    assert_eq!(got, want);
}

/// Rows that a query would not give again (`random()`, a `LIMIT`), a query that says
/// `materialize: true`, and one whose consumer reads it twice are written as files, even
/// though they streamed.
#[test]
fn queries_that_cannot_be_run_again_or_ask_to_are_written_as_rows() {
    let p = project("");
    p.write("data/n.csv", &numbers(30_000, ""));
    p.pipeline(
        "n",
        r#"
tasks:
  raw:
    extract: {source: csv, path: data/n.csv}
  dice:
    depends_on: [raw]
    sql: SELECT id, random() AS r FROM raw
  save_dice:
    depends_on: [dice]
    load: {sink: csv, path: out/dice.csv}
  raw2:
    extract: {source: csv, path: data/n.csv}
  some:
    depends_on: [raw2]
    sql: SELECT id FROM raw2 ORDER BY id LIMIT 10
  save_some:
    depends_on: [some]
    load: {sink: csv, path: out/some.csv}
  raw3:
    extract: {source: csv, path: data/n.csv}
  kept:
    depends_on: [raw3]
    sql: {query: "SELECT id, v FROM raw3 WHERE v = 1", materialize: true}
  save_kept:
    depends_on: [kept]
    load: {sink: csv, path: out/kept.csv}
  raw4:
    extract: {source: csv, path: data/n.csv}
  doubled:
    depends_on: [raw4]
    sql: SELECT id, v * 2 AS w FROM raw4
  pairs:
    depends_on: [doubled]
    sql: SELECT count(*) AS n FROM doubled a JOIN doubled b ON a.id = b.id AND a.w = b.w
  save_pairs:
    depends_on: [pairs]
    load: {sink: csv, path: out/pairs.csv}
"#,
    );
    let r = run(&p, &["run", "n", "--max-workers", "4"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let id = latest_run(&p);
    let s = p.status(&id);
    // Each query streamed into its load, and still wrote its rows.
    for (q, save) in [
        ("dice", "save_dice"),
        ("some", "save_some"),
        ("kept", "save_kept"),
    ] {
        let (_, q_end) = times(&s, q);
        let (save_start, _) = times(&s, save);
        assert!(save_start < q_end, "{save} did not stream from {q}: {s}");
        let (files, view) = dataset_files(&p, &id, q);
        assert!(files > 0 && !view, "{q}: {files} files, view {view}");
    }
    // `pairs` read `doubled` twice, so `doubled` wrote its rows for it to read.
    let (files, view) = dataset_files(&p, &id, "doubled");
    assert!(files > 0 && !view, "doubled: {files} files, view {view}");
    assert_eq!(p.read("out/pairs.csv"), "n\n30000\n");
    assert_eq!(p.read("out/some.csv").lines().count(), 11);
    assert_eq!(p.read("out/dice.csv").lines().count(), 30_001);
}

#[test]
fn without_streaming_each_task_waits_for_its_upstream() {
    let p = project("  streaming: false\n");
    p.write("data/n.csv", &numbers(10_000, ""));
    p.pipeline("n", CHAIN);
    let r = run(&p, &["run", "n"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let s = p.status(&latest_run(&p));
    let (_, raw_end) = times(&s, "raw");
    let (q_start, q_end) = times(&s, "q");
    let (save_start, _) = times(&s, "save");
    assert!(q_start >= raw_end && save_start >= q_end, "{s}");
    assert_eq!(
        task(&s, "save")["metrics"]["rows_out"],
        (0..10_000).filter(|i| i % 7 != 0).count() as u64
    );
}

#[test]
fn a_producer_failing_late_skips_what_streamed_from_it_and_leaves_the_target_whole() {
    let p = project("");
    p.write("data/n.csv", &numbers(1_000, ""));
    p.pipeline("n", CHAIN);
    assert_eq!(run(&p, &["run", "n"]).code, 0);
    let before = std::fs::read(p.path().join("out/n.parquet")).unwrap();
    // 200,000 good rows stream down before the bad value at the end is parsed.
    p.write("data/n.csv", &numbers(200_000, "200000,seven\n"));
    let r = run(&p, &["run", "n"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let id = latest_run(&p);
    let s = p.status(&id);
    assert_eq!(task(&s, "raw")["state"], "failed", "{s}");
    for t in ["q", "save"] {
        assert_eq!(task(&s, t)["state"], "skipped", "{s}");
        let err = task(&s, t)["error"].as_str().unwrap_or_default();
        assert!(err.contains("did not succeed"), "{t}: {err}");
    }
    // The producer's error is located, and the consumers say which upstream failed.
    let raw_err = task(&s, "raw")["error"].as_str().unwrap_or_default();
    assert!(raw_err.contains("line 200002"), "{raw_err}");
    assert!(
        task(&s, "q")["error"]
            .as_str()
            .unwrap_or_default()
            .contains("`raw`"),
        "{s}"
    );
    assert_eq!(
        std::fs::read(p.path().join("out/n.parquet")).unwrap(),
        before
    );
    let leftovers: Vec<_> = std::fs::read_dir(p.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    // No dataset of the failed producer nor of the query that streamed from it.
    let data = p.path().join(".cauce/data").join(&id);
    assert!(!data.join("raw").exists() && !data.join("q").exists());
}

#[test]
fn a_query_done_before_its_input_commits_only_after_the_input_succeeded() {
    let p = project("");
    p.write("data/n.csv", &numbers(200_000, "200000,seven\n"));
    p.pipeline(
        "n",
        r#"
tasks:
  raw:
    extract: {source: csv, path: data/n.csv, columns: {v: int}}
  first:
    depends_on: [raw]
    sql: SELECT * FROM raw LIMIT 5
  save:
    depends_on: [first]
    load: {sink: csv, path: out/first.csv}
"#,
    );
    let r = run(&p, &["run", "n"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let states = p.task_states(&latest_run(&p));
    assert_eq!(states["raw"], "failed");
    assert_eq!(states["first"], "skipped");
    assert_eq!(states["save"], "skipped");
    assert!(!p.path().join("out/first.csv").exists());
    // With a good input the same query succeeds.
    p.write("data/n.csv", &numbers(200_000, ""));
    let r = run(&p, &["run", "n"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(p.read("out/first.csv").lines().count(), 6);
}

#[test]
fn a_query_reading_a_live_input_twice_or_not_at_all_does_not_stall() {
    let p = project("");
    p.write("data/n.csv", &numbers(100_000, ""));
    p.pipeline(
        "n",
        r#"
tasks:
  raw:
    extract: {source: csv, path: data/n.csv, columns: {v: int}}
  pairs:
    depends_on: [raw]
    sql: SELECT count(*) AS n FROM raw a JOIN raw b ON a.id = b.id WHERE a.v = b.v
  save:
    depends_on: [pairs]
    load: {sink: csv, path: out/pairs.csv}
  other:
    extract: {source: csv, path: data/n.csv}
  constant:
    depends_on: [other]
    sql: SELECT 42 AS answer
  save_constant:
    depends_on: [constant]
    load: {sink: csv, path: out/constant.csv}
"#,
    );
    let r = run(&p, &["run", "n"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(p.read("out/pairs.csv"), "n\n100000\n");
    assert_eq!(p.read("out/constant.csv"), "answer\n42\n");
    // The producer nobody read still wrote its whole dataset.
    let s = p.status(&latest_run(&p));
    assert_eq!(task(&s, "other")["metrics"]["rows_out"], 100_000);
}

#[test]
fn a_producer_that_may_retry_does_not_stream_and_a_failing_consumer_retries_after_it() {
    let p = project("");
    p.write("data/n.csv", &numbers(50_000, ""));
    // `out/blocked` is a file, so the load into a folder under it fails every time.
    p.write("out/blocked", "not a folder");
    p.pipeline(
        "n",
        r#"
tasks:
  raw:
    extract: {source: csv, path: data/n.csv, columns: {v: int}}
    retries: 1
  q:
    depends_on: [raw]
    sql: SELECT id FROM raw
  other:
    extract: {source: csv, path: data/n.csv}
  save:
    depends_on: [other]
    load: {sink: parquet, path: out/blocked/x.parquet}
    retries: 1
    retry_delay: 0s
    critical: false
"#,
    );
    let r = run(&p, &["run", "n"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let s = p.status(&latest_run(&p));
    // `raw` could have failed and been retried: `q` waited for it.
    let (_, raw_end) = times(&s, "raw");
    let (q_start, _) = times(&s, "q");
    assert!(q_start >= raw_end, "{s}");
    assert_eq!(task(&s, "q")["state"], "success");
    // `save` streamed from `other`, failed, and its retry waited for `other` to end.
    assert_eq!(task(&s, "other")["state"], "success");
    assert_eq!(task(&s, "save")["state"], "failed");
    assert_eq!(task(&s, "save")["attempts"], 2, "{s}");
}

/// A query over one large extract and two small ones, joined: with three slots or with
/// two, the three extracts start together (the third beyond the two slots, to stream), the
/// query streams from the three, and the join hashes the small tables (each live input has
/// its file's size) while the large one streams through.
#[test]
fn a_query_joining_three_live_extracts_streams_from_all_of_them() {
    for workers in ["3", "2"] {
        three_live_extracts(workers);
    }
}

fn three_live_extracts(workers: &str) {
    let p = project("");
    p.write("data/facts.csv", &numbers(200_000, ""));
    let mut names = String::from("k,name\n");
    let mut groups = String::from("name,grp\n");
    for k in 0..7 {
        names.push_str(&format!("{k},n{k}\n"));
        groups.push_str(&format!("n{k},g{}\n", k % 2));
    }
    p.write("data/names.csv", &names);
    p.write("data/groups.csv", &groups);
    p.pipeline(
        "fan",
        r#"
tasks:
  facts:
    extract: {source: csv, path: data/facts.csv}
  names:
    extract: {source: csv, path: data/names.csv}
  groups:
    extract: {source: csv, path: data/groups.csv}
  q:
    depends_on: [facts, names, groups]
    sql: |
      SELECT g.grp, COUNT(*) AS n, SUM(f.id) AS total
      FROM facts f JOIN names n ON f.v = n.k JOIN groups g ON n.name = g.name
      GROUP BY g.grp ORDER BY g.grp
  save:
    depends_on: [q]
    load: {sink: csv, path: out/q.csv}
"#,
    );
    let r = run(&p, &["run", "fan", "--max-workers", workers]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let s = p.status(&latest_run(&p));
    let (_, facts_end) = times(&s, "facts");
    let (q_start, _) = times(&s, "q");
    for small in ["names", "groups"] {
        let (start, _) = times(&s, small);
        assert!(
            start < facts_end,
            "{workers} slots: {small} did not start with the others: {s}"
        );
    }
    assert!(
        q_start < facts_end,
        "{workers} slots: the query did not stream: {s}"
    );
    // Every extract's dataset is still written whole.
    assert_eq!(task(&s, "facts")["metrics"]["rows_out"], 200_000, "{s}");
    let (mut n, mut total) = ([0u64; 2], [0u64; 2]);
    for id in 0..200_000u64 {
        let g = ((id % 7) % 2) as usize;
        n[g] += 1;
        total[g] += id;
    }
    let want = format!(
        "grp,n,total\ng0,{},{}\ng1,{},{}\n",
        n[0], total[0], n[1], total[1]
    );
    assert_eq!(p.read("out/q.csv"), want);
}

/// A query joining a live input of unknown size (the output of another query) does not
/// plan with it as a stream: it reads that dataset once written, and the run succeeds.
#[test]
fn a_join_with_a_live_query_output_reads_that_dataset_once_written() {
    let p = project("");
    p.write("data/n.csv", &numbers(50_000, ""));
    let mut names = String::from("k,name\n");
    for k in 0..7 {
        names.push_str(&format!("{k},n{k}\n"));
    }
    p.write("data/names.csv", &names);
    p.pipeline(
        "mix",
        r#"
tasks:
  raw:
    extract: {source: csv, path: data/n.csv}
  doubled:
    depends_on: [raw]
    sql: SELECT id, v, v * 2 AS w FROM raw
  names:
    extract: {source: csv, path: data/names.csv}
  q:
    depends_on: [doubled, names]
    sql: |
      SELECT n.name, COUNT(*) AS c, SUM(d.w) AS w
      FROM doubled d JOIN names n ON d.v = n.k GROUP BY n.name ORDER BY n.name
  save:
    depends_on: [q]
    load: {sink: csv, path: out/q.csv}
"#,
    );
    let r = run(&p, &["run", "mix", "--max-workers", "3"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let s = p.status(&latest_run(&p));
    // It started with its upstream tasks, and read `doubled` once that had ended.
    let (_, doubled_end) = times(&s, "doubled");
    let (q_start, q_end) = times(&s, "q");
    assert!(q_start < doubled_end && q_end >= doubled_end, "{s}");
    let mut want = String::from("name,c,w\n");
    for k in 0..7u64 {
        let c = (0..50_000u64).filter(|i| i % 7 == k).count();
        want.push_str(&format!("n{k},{c},{}\n", c as u64 * k * 2));
    }
    assert_eq!(p.read("out/q.csv"), want);
}

/// A query holding a secret (`${VAR}`) streams into its load: its log shows the secret
/// masked, and its rows are written, not kept as a view whose file would hold the secret.
#[test]
fn a_query_holding_a_secret_is_masked_in_its_log_and_not_kept_as_a_view() {
    let p = project("");
    p.write("data/n.csv", &numbers(1_000, ""));
    p.pipeline(
        "n",
        r#"
tasks:
  raw:
    extract: {source: csv, path: data/n.csv}
  tagged:
    depends_on: [raw]
    sql: "SELECT id, ${CAUCE_IT_SQL_SECRET} AS tag FROM raw WHERE v = 3"
  save:
    depends_on: [tagged]
    load: {sink: csv, path: out/tagged.csv}
"#,
    );
    let out = p
        .cmd(&["run", "n"])
        .env("CAUCE_IT_SQL_SECRET", "s3cret-in-sql")
        .output()
        .unwrap();
    let r = Run::from(out);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let id = latest_run(&p);
    let s = p.status(&id);
    let (_, q_end) = times(&s, "tagged");
    let (save_start, _) = times(&s, "save");
    assert!(save_start < q_end, "the load did not stream: {s}");
    let (files, view) = dataset_files(&p, &id, "tagged");
    assert!(files > 0 && !view, "{files} files, view {view}");
    let log = p.run(&["logs", &id, "tagged"]).stdout;
    assert!(log.contains("'***' AS tag"), "{log}");
    assert!(!log.contains("s3cret-in-sql"), "{log}");
    // The rows themselves hold what the query made of it.
    assert!(p.read("out/tagged.csv").contains("s3cret-in-sql"));
}
