//! Streaming between data tasks: a `sql` or `load` starts beside the extract or query that
//! feeds it and takes its batches as they are written, while every dataset is still
//! written whole; nothing downstream commits before its upstream succeeded; a failure
//! upstream skips what streamed from it and leaves targets as they were; queries that
//! read a live input twice or not at all do not stall; `data.streaming: false` turns it off.

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

#[test]
fn a_chain_streams_and_still_writes_every_dataset() {
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
    // The load counted the bytes of the dataset it read, written whole.
    assert!(
        task(&s, "save")["metrics"]["bytes_read"].as_u64().unwrap() > 0,
        "{s}"
    );
    let out = py(
        p.path(),
        &format!(
            r#"
import pyarrow.parquet as pq, pyarrow.dataset as ds
t = pq.read_table('out/n.parquet')
print(t.num_rows, sum(t.column('w').to_pylist()), str(t.schema.field('w').type))
print(ds.dataset('.cauce/data/{id}/raw', format='arrow').count_rows(), ds.dataset('.cauce/data/{id}/q', format='arrow').count_rows())
"#
        ),
    );
    let want: i64 = (0..100_000i64).map(|i| (i % 7) * 2).sum();
    assert_eq!(
        out.trim(),
        format!("{kept} {want} int64\n100000 {kept}"),
        "{out}"
    );
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

/// A query over one large extract and two small ones, joined, all started together (three
/// slots): the query streams from the three, and the join hashes the small tables (each
/// live input has its file's size) while the large one streams through.
#[test]
fn a_query_joining_three_live_extracts_streams_from_all_of_them() {
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
    let r = run(&p, &["run", "fan", "--max-workers", "3"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let s = p.status(&latest_run(&p));
    let (_, facts_end) = times(&s, "facts");
    let (q_start, _) = times(&s, "q");
    for small in ["names", "groups"] {
        let (start, _) = times(&s, small);
        assert!(
            start < facts_end,
            "{small} did not start with the others: {s}"
        );
    }
    assert!(q_start < facts_end, "the query did not stream: {s}");
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
