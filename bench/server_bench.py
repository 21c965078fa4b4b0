#!/usr/bin/env python3
"""Helpers of bench/server_bench.sh (see that file for what is measured and why).

Subcommands (every one appends its figures as a JSON line to RESULTS, read by `summary`):

  history ADDR TOKEN STORE RUNS PIPES RESULTS
      Starts RUNS real runs through the API (POST /api/v1/pipelines/pN/runs, round robin
      over p1..pPIPES) on one keep-alive connection, never more than 16 executing at once,
      waits for all to end, then checks the store (runs, task_runs, attempts, states).
  depth STORE PIPE
      Prints runs and failures per pipeline, and how many of the newest rows of the history
      hold the 50 runs of each benchmarked page (the rows a newest-first scan reads).
  midrun STORE
      Prints the id of the run in the middle of the history (by id, i.e. by time).
  wrk NAME PATH AUTH ADDR TOKEN THREADS CONNS SECS WARMUP SERVER_PID LUA RESULTS
      Checks the endpoint once (status 200, expected JSON), warms up for WARMUP seconds,
      then runs wrk for SECS seconds and records req/s, percentiles, errors and the CPU used
      by the server, by wrk and by everything else on the machine meanwhile.
  sched LABEL ADDR SERVER_PID STORE NPIPES NBOUNDARIES SERVER_ERR RESULTS
      Waits for the scheduler to have seen every pipeline, then for NBOUNDARIES whole minutes
      to fire and their runs to end; reads cauce_scheduler_lag_seconds from /metrics and the
      exact lag of every scheduled run from the store.
  summary RESULTS
      Prints the final table.

STORE is `sqlite:PATH` (read with Python's sqlite3) or a postgres:// URL (read with psql).
Standard library only.
"""

import http.client
import json
import os
import re
import resource
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timezone


# --- small utilities ----------------------------------------------------------------------

def log(msg):
    print(msg, file=sys.stderr, flush=True)


def record(results, obj):
    with open(results, "a") as f:
        f.write(json.dumps(obj) + "\n")


def rows(store, sql):
    """Rows of a query, as tuples of strings/ints (psql: strings; callers convert)."""
    if store.startswith("sqlite:"):
        con = sqlite3.connect(store[len("sqlite:"):], timeout=30)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()
    out = subprocess.run(
        ["psql", store, "-X", "-q", "-At", "-F", "\x1f", "-v", "ON_ERROR_STOP=1", "-c", sql],
        check=True, capture_output=True, text=True).stdout
    return [tuple(None if v == "" else v for v in line.split("\x1f"))
            for line in out.splitlines() if line]


def parse_time_ms(text):
    """RFC 3339 (any number of fractional digits) -> epoch milliseconds."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", text)
    if not m:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    base, frac, tz = m.groups()
    tz = "+00:00" if tz == "Z" else tz
    dt = datetime.fromisoformat(base + tz)
    ms = int(dt.timestamp()) * 1000
    if frac:
        ms += int((frac + "000")[:3])
    return ms


def iso(ms):
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%H:%M:%S.%f")[:-3]


def pct(sorted_vals, q):
    """Nearest-rank percentile of a sorted list."""
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, int(-(-q * len(sorted_vals) // 100)) - 1))
    return sorted_vals[k]


def busy_ticks():
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu "):
                v = [int(x) for x in line.split()[1:]]
                return v[0] + v[1] + v[2] + v[5] + v[6]  # user nice system irq softirq
    return 0


def proc_ticks(pid, children=False):
    """utime + stime of a process (its threads; with children=True also its reaped children)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in rest[11:15 if children else 13])
    except (OSError, IndexError, ValueError):
        return None


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


class Api:
    def __init__(self, addr, token=None):
        host, port = addr.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)
        self.headers = {"Content-Type": "application/json"}
        if token:
            self.headers["Authorization"] = "Bearer " + token

    def call(self, method, path, body=None, auth=True):
        headers = dict(self.headers) if auth else {}
        self.conn.request(method, path, body=body, headers=headers)
        r = self.conn.getresponse()
        return r.status, r.read()

    def metrics(self):
        status, body = self.call("GET", "/metrics", auth=False)
        if status != 200:
            raise RuntimeError(f"GET /metrics answered {status}: {body[:200]!r}")
        return body.decode()


def active_runs(api):
    m = re.search(r"^cauce_server_active_runs (\d+)", api.metrics(), re.M)
    return int(m.group(1)) if m else 0


# --- history ------------------------------------------------------------------------------

def cmd_history(addr, token, store, runs, pipes, results):
    runs, pipes = int(runs), int(pipes)
    api = Api(addr, token)
    max_active, cap_s = 16, 900
    t0 = time.time()
    bad = {}
    last_report = t0
    for i in range(runs):
        status, body = api.call("POST", f"/api/v1/pipelines/p{i % pipes + 1}/runs", body="{}")
        if not 200 <= status < 300:
            bad[status] = bad.get(status, 0) + 1
            if sum(bad.values()) <= 3:
                log(f"bench: POST /api/v1/pipelines/p{i % pipes + 1}/runs answered {status}: {body[:300]!r}")
        if i % 20 == 19:
            while active_runs(api) > max_active:
                time.sleep(0.005)
        now = time.time()
        if now - last_report >= 15:
            last_report = now
            log(f"bench:   {i + 1} runs started in {now - t0:.0f} s ({(i + 1) / (now - t0):.0f} runs/s)")
        if now - t0 > cap_s:
            log(f"bench: history creation stopped after {cap_s} s at {i + 1} runs")
            runs = i + 1
            break
    while active_runs(api) > 0:
        time.sleep(0.05)
    took = time.time() - t0
    n_runs = int(rows(store, "SELECT count(*) FROM runs")[0][0])
    states = {s: int(n) for s, n in rows(store, "SELECT state, count(*) FROM runs GROUP BY state")}
    n_tasks = int(rows(store, "SELECT count(*) FROM task_runs")[0][0])
    n_att = int(rows(store, "SELECT count(*) FROM attempts")[0][0])
    span = rows(store, "SELECT min(id), max(id) FROM runs")[0]
    r = dict(part="history", method="real runs through the API", runs=n_runs, requested=runs,
             pipes=pipes, seconds=round(took, 1), runs_per_s=round(n_runs / took, 1),
             states=states, task_runs=n_tasks, attempts=n_att, bad_status=bad,
             first_id=span[0], last_id=span[1])
    record(results, r)
    st = ", ".join(f"{k} {v}" for k, v in sorted(states.items()))
    print(f"  {n_runs} runs ({st}), {n_tasks} task_runs, {n_att} attempts; ids {span[0]} .. {span[1]}")
    print(f"  created in {took:.1f} s = {n_runs / took:.0f} runs/s (at most {max_active} executing at once)")
    if bad:
        print(f"  PROBLEM: non-2xx answers to POST: {bad}")
    if states.get("running"):
        print(f"  PROBLEM: {states['running']} runs still `running` after the server said none is active")


def cmd_depth(store, pipe):
    """How deep in the history (newest first) each benchmarked page's 50th run lies."""
    total = int(rows(store, "SELECT count(*) FROM runs")[0][0])
    counts = {(p, st): int(n) for p, st, n in
              rows(store, "SELECT pipeline, state, count(*) FROM runs GROUP BY pipeline, state")}
    per = ", ".join(f"{p} {sum(n for (q, _), n in counts.items() if q == p)} runs / "
                    f"{counts.get((p, 'failed'), 0)} failed"
                    for p in sorted({p for p, _ in counts}))
    print(f"   history by pipeline: {per}")
    out = []
    for label, where in (("list", "1 = 1"), ("filtered", f"pipeline = '{pipe}' AND state = 'success'"),
                         ("rare", f"pipeline = '{pipe}' AND state = 'failed'")):
        ids = [r[0] for r in rows(store, f"SELECT id FROM runs WHERE {where} ORDER BY id DESC LIMIT 50")]
        # A short page means the scan went through the whole history.
        depth = (int(rows(store, f"SELECT count(*) FROM runs WHERE id >= '{ids[-1]}'")[0][0])
                 if len(ids) == 50 else total)
        out.append(f"{label} {depth}")
    print(f"   newest rows of the {total}-run history that hold each page's 50 runs: " + ", ".join(out))


def cmd_midrun(store):
    n = int(rows(store, "SELECT count(*) FROM runs")[0][0])
    print(rows(store, f"SELECT id FROM runs ORDER BY id LIMIT 1 OFFSET {n // 2}")[0][0])


# --- wrk ----------------------------------------------------------------------------------

def check_body(name, path, status, body):
    """Why the answer is not what this endpoint should give (None: fine)."""
    if status != 200:
        return f"status {status}: {body[:300]!r}"
    try:
        doc = json.loads(body)
    except ValueError as e:
        return f"not JSON ({e}): {body[:200]!r}"
    if name == "health":
        return None if doc.get("status") == "ok" else f"unexpected body {doc}"
    if name == "me":
        return None
    if name in ("list", "filtered", "rare"):
        runs = doc.get("runs", [])
        limit = int(re.search(r"limit=(\d+)", path).group(1))
        # `rare` selects ~1% of the history: a short page is right when the history is small.
        if len(runs) != limit and name != "rare":
            return f"{len(runs)} runs in the page, expected {limit}"
        ids = [r["id"] for r in runs]
        if ids != sorted(ids, reverse=True):
            return "runs not newest first"
        if len(runs) == limit and not doc.get("next_cursor"):
            return "no next_cursor on a full page"
        if name in ("filtered", "rare"):
            pipe = re.search(r"pipeline=([^&]+)", path).group(1)
            state = re.search(r"state=([^&]+)", path).group(1)
            wrong = [r["id"] for r in runs if r["pipeline"] != pipe or r["state"] != state]
            if wrong:
                return f"{len(wrong)} runs do not match the filter, e.g. {wrong[0]}"
        return None
    if name == "detail":
        rid = path.rsplit("/", 1)[1]
        if doc.get("run", {}).get("id") != rid:
            return "wrong run"
        if len(doc.get("tasks", [])) != 3 or len(doc.get("attempts", [])) < 3:
            return f"{len(doc.get('tasks', []))} tasks, {len(doc.get('attempts', []))} attempts"
        return None
    return None


def run_wrk(url, threads, conns, secs, lua, token, auth):
    cmd = ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{secs}s", "--timeout", "10s",
           "-s", lua]
    if auth:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    cmd.append(url)
    p = subprocess.run(cmd, capture_output=True, text=True)
    m = re.search(r"^WRKRESULT (.*)$", p.stdout, re.M)
    if p.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed (exit {p.returncode}): {p.stdout[-500:]} {p.stderr[-500:]}")
    out = {}
    for kv in m.group(1).split():
        k, v = kv.split("=")
        out[k] = float(v)
    return out


def cmd_wrk(name, path, auth, addr, token, threads, conns, secs, warmup, pid, lua, results):
    auth = auth == "auth"
    threads, conns, secs, warmup, pid = int(threads), int(conns), int(secs), int(warmup), int(pid)
    api = Api(addr, token)
    status, body = api.call("GET", path, auth=auth)
    problem = check_body(name, path, status, body)
    url = f"http://{addr}{path}"
    rec = dict(part="wrk", name=name, path=path, threads=threads, conns=conns, secs=secs,
               body_bytes=len(body), check=problem)
    if problem:
        print(f"  {path}: PROBLEM before load: {problem}")
    if warmup > 0:
        run_wrk(url, threads, conns, warmup, lua, token, auth)
    hz = os.sysconf("SC_CLK_TCK")
    b0, s0 = busy_ticks(), proc_ticks(pid)
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    w0 = time.time()
    res = run_wrk(url, threads, conns, secs, lua, token, auth)
    wall = time.time() - w0
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    b1, s1 = busy_ticks(), proc_ticks(pid)
    server_cpu = (s1 - s0) / hz if s0 is not None and s1 is not None else None
    wrk_cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
    other = max(0.0, (b1 - b0) / hz - (server_cpu or 0) - wrk_cpu)
    # Check again after the load: same answer, server still there.
    still = alive(pid)
    after = None
    if still:
        try:
            status, body2 = Api(addr, token).call("GET", path, auth=auth)
            after = check_body(name, path, status, body2)
        except OSError as e:
            after = f"request failed: {e}"
    errors = {k[4:]: int(v) for k, v in res.items() if k.startswith("err_") and v}
    dur = res["duration_us"] / 1e6
    rec.update(requests=int(res["requests"]), rps=res["requests"] / dur,
               p50_ms=res["p50_us"] / 1000, p75_ms=res["p75_us"] / 1000,
               p90_ms=res["p90_us"] / 1000, p99_ms=res["p99_us"] / 1000,
               max_ms=res["max_us"] / 1000, mean_ms=res["mean_us"] / 1000, errors=errors,
               server_cores=None if server_cpu is None else server_cpu / wall,
               wrk_cores=wrk_cpu / wall, other_cores=other / wall, alive=still,
               check_after=after)
    record(results, rec)
    sc = "-" if server_cpu is None else f"{server_cpu / wall:.2f}"
    err = ", ".join(f"{k} {v}" for k, v in errors.items()) or "0"
    print(f"  {name:<9} {rec['rps']:9.0f} {rec['p50_ms']:8.2f} {rec['p90_ms']:8.2f} {rec['p99_ms']:8.2f} "
          f"{rec['max_ms']:8.1f} {len(body) / 1024:7.1f} {err:>8} {sc:>6} {wrk_cpu / wall:5.2f} {other / wall:5.2f}")
    if other / wall > 0.2:
        print(f"    note: other processes used {other / wall:.2f} cores meanwhile; this row is noisy")
    if errors:
        print(f"    PROBLEM: wrk counted errors: {errors} (status = non-2xx/3xx answers)")
    if not still:
        print(f"    PROBLEM: the server (pid {pid}) is gone after the load")
    elif after:
        print(f"    PROBLEM after load: {after}")


# --- scheduler ----------------------------------------------------------------------------

def parse_histogram(text, name):
    buckets, total, count = [], None, None
    for line in text.splitlines():
        m = re.match(rf'^{name}_bucket\{{le="([^"]+)"\}} (\S+)$', line)
        if m:
            le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
            buckets.append((le, float(m.group(2))))
        elif line.startswith(f"{name}_sum "):
            total = float(line.split()[1])
        elif line.startswith(f"{name}_count "):
            count = float(line.split()[1])
    buckets.sort()
    return buckets, total, count


def bucket_bound(buckets, count, q):
    """The smallest bucket bound holding at least q% of the observations."""
    for le, c in buckets:
        if count and c >= q / 100 * count:
            return le
    return None


def cmd_sched(label, addr, pid, store, npipes, nbound, server_err, results):
    npipes, nbound, pid = int(npipes), int(nbound), int(pid)
    api = Api(addr)
    t0 = time.time()
    # 1. The first pass records a mark per pipeline (first sight: nothing fires).
    while True:
        n = int(rows(store, "SELECT count(*) FROM schedules")[0][0])
        if n >= npipes:
            break
        if time.time() - t0 > 120 or not alive(pid):
            print(f"  PROBLEM: the scheduler recorded {n} of {npipes} schedules in {time.time() - t0:.0f} s")
            record(results, dict(part="sched", label=label, problem="first pass incomplete"))
            return
        time.sleep(0.5)
    first_pass_s = time.time() - t0
    mark = max(int(v) for (v,) in rows(store, "SELECT last_fire FROM schedules"))
    first = (mark // 60000 + 1) * 60000
    bounds = [first + 60000 * k for k in range(nbound)]
    print(f"  scheduler saw all {npipes} pipelines {first_pass_s:.1f} s after start; "
          f"measuring the fires at {', '.join(iso(b)[:5] for b in bounds)} UTC "
          f"(waiting {max(0, bounds[-1] / 1000 - time.time()):.0f} s for the last)")

    def progress():
        got = {}
        for ld, state, n in rows(store, "SELECT logical_date, state, count(*) FROM runs "
                                        "WHERE trigger_kind = 'schedule' GROUP BY logical_date, state"):
            d = got.setdefault(parse_time_ms(ld), {})
            d[state] = d.get(state, 0) + int(n)
        return got

    # 2. Wait for every boundary's runs to be created and ended (cap: 3 min after the last).
    # CPU is counted from 1 s before the first fire time: the server with its tasks, and the
    # rest of the machine (PostgreSQL's backends included, when it is the store).
    time.sleep(max(0.0, bounds[0] / 1000 - 1 - time.time()))
    hz = os.sysconf("SC_CLK_TCK")
    cpu0 = (time.time(), busy_ticks(), proc_ticks(pid, children=True),
            resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    deadline = bounds[-1] / 1000 + 180
    unfinished = None
    while True:
        now = time.time()
        if not alive(pid):
            unfinished = "the server died"
            break
        if now * 1000 > bounds[-1] + 500:
            got = progress()
            pending = [b for b in bounds
                       if sum(got.get(b, {}).values()) < npipes or got.get(b, {}).get("running")]
            if not pending:
                break
            if now > deadline or not alive(pid):
                unfinished = {iso(b): got.get(b, {}) for b in pending}
                break
        time.sleep(1 if now * 1000 > bounds[-1] else min(5, max(0.2, bounds[-1] / 1000 - now)))
    done_at = time.time()
    s1 = proc_ticks(pid, children=True)
    me1, ch1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    win = done_at - cpu0[0]
    server_cpu = (s1 - cpu0[2]) / hz if s1 is not None and cpu0[2] is not None else 0.0
    mine = sum(getattr(a, f) - getattr(b, f) for a, b in ((me1, cpu0[3]), (ch1, cpu0[4]))
               for f in ("ru_utime", "ru_stime"))
    other_cpu = max(0.0, (busy_ticks() - cpu0[1]) / hz - server_cpu - mine)
    # 3. The histogram of this server's life (only these boundaries, unless another fired).
    try:
        text = api.metrics()
    except OSError as e:
        text = ""
        print(f"  PROBLEM: GET /metrics failed: {e}")
    buckets, hsum, hcount = parse_histogram(text, "cauce_scheduler_lag_seconds")
    fires = sum(float(m) for m in re.findall(r"^cauce_schedule_fires_total\{[^}]*\} (\S+)$", text, re.M))
    # 4. Exact lags from the store.
    data = rows(store, "SELECT r.id, r.pipeline, r.logical_date, r.created_at, r.ended_at, r.state, "
                       "(SELECT min(t.started_at) FROM task_runs t WHERE t.run_id = r.id) "
                       "FROM runs r WHERE r.trigger_kind = 'schedule'")
    per = {b: [] for b in bounds}
    for rid, pipe, ld, created, ended, state, started in data:
        due = parse_time_ms(ld)
        if due in per:
            per[due].append(dict(id=rid, pipeline=pipe, created=int(created),
                                 ended=None if ended is None else int(ended), state=state,
                                 started=None if started is None else int(started)))
    rec = dict(part="sched", label=label, npipes=npipes, bounds=[iso(b) for b in bounds],
               first_pass_s=round(first_pass_s, 2), hist_count=hcount, hist_sum=hsum,
               hist_mean_ms=(hsum / hcount * 1000) if hcount else None,
               hist_p50_le=bucket_bound(buckets, hcount, 50),
               hist_p99_le=bucket_bound(buckets, hcount, 99),
               fires_metric=fires, unfinished=unfinished, alive=alive(pid),
               window_s=round(win, 1), server_cpu_s=round(server_cpu, 1),
               other_cpu_s=round(other_cpu, 1))
    print(f"  CPU from 1 s before the first fire time until the last run ended ({win:.0f} s, "
          f"{os.cpu_count() * win:.0f} CPU-s available): cauce server with its tasks {server_cpu:.1f} CPU-s, "
          f"other processes {other_cpu:.1f} CPU-s{' (PostgreSQL included)' if not store.startswith('sqlite:') else ''}")
    print(f"  /metrics cauce_scheduler_lag_seconds: count {hcount:.0f}, mean "
          f"{rec['hist_mean_ms'] or 0:.1f} ms, p50 <= {rec['hist_p50_le']} s, p99 <= {rec['hist_p99_le']} s "
          f"(bucket bounds); cauce_schedule_fires total {fires:.0f}")
    if hcount is not None and hcount != npipes * nbound:
        print(f"    note: the histogram holds {hcount:.0f} observations, not {npipes * nbound} "
              f"(another boundary fired before it was read, or fires are missing)")
    print(f"  exact, from the store (lag = runs.created_at - logical_date; start = first task started;"
          f" done = last run ended), ms:")
    print(f"  {'fire time':<10} {'runs':>5} {'ok':>5} {'lag min':>8} {'p50':>7} {'p99':>7} {'max':>7} "
          f"{'start p50':>9} {'p99':>7} {'max':>7} {'all created':>11} {'all done':>9}")
    all_lag, all_start, worst_done, worst_created = [], [], 0, 0
    for b in bounds:
        rs = per[b]
        lag = sorted(r["created"] - b for r in rs)
        start = sorted(r["started"] - b for r in rs if r["started"] is not None)
        ended = [r["ended"] for r in rs if r["ended"] is not None]
        ok = sum(1 for r in rs if r["state"] == "success")
        created_span = (max(r["created"] for r in rs) - b) if rs else None
        done = (max(ended) - b) if ended and len(ended) == len(rs) else None
        all_lag += lag
        all_start += start
        worst_created = max(worst_created, created_span or 0)
        worst_done = max(worst_done, done or 0) if done is not None else float("inf")

        def f(v):
            return "-" if v is None else f"{v:.0f}"
        print(f"  {iso(b)[:8]:<10} {len(rs):5d} {ok:5d} {f(lag[0] if lag else None):>8} {f(pct(lag, 50)):>7} {f(pct(lag, 99)):>7} "
              f"{f(lag[-1] if lag else None):>7} {f(pct(start, 50)):>9} {f(pct(start, 99)):>7} "
              f"{f(start[-1] if start else None):>7} {f(created_span):>11} {f(done):>9}")
        rec.setdefault("per_bound", []).append(dict(
            at=iso(b), runs=len(rs), success=ok, lag_min=lag[0] if lag else None, lag_p50=pct(lag, 50), lag_p99=pct(lag, 99),
            lag_max=lag[-1] if lag else None, start_p50=pct(start, 50), start_p99=pct(start, 99),
            start_max=start[-1] if start else None, all_created_ms=created_span, all_done_ms=done))
    for pb in rec.get("per_bound", []):
        if pb["runs"] > 1 and pb["lag_min"] is not None:
            print(f"  {pb['at'][:8]}: runs created from {pb['lag_min']} to {pb['lag_max']} ms after the fire time, "
                  f"{(pb['lag_max'] - pb['lag_min']) / (pb['runs'] - 1):.2f} ms apart on average "
                  f"(the pass handles pipelines one after the other)")
    all_lag.sort()
    all_start.sort()
    rec.update(runs=len(all_lag), lag_p50=pct(all_lag, 50), lag_p99=pct(all_lag, 99),
               lag_max=all_lag[-1] if all_lag else None, start_p50=pct(all_start, 50),
               start_p99=pct(all_start, 99), start_max=all_start[-1] if all_start else None,
               all_created_ms=worst_created, all_done_ms=None if worst_done == float("inf") else worst_done)
    # 5. What the server logged (warn level and up) while doing it.
    try:
        lines = [l for l in open(server_err, errors="replace").read().splitlines()
                 if "listening on" not in l]
    except OSError:
        lines = []
    rec["server_log_lines"] = len(lines)
    record(results, rec)
    problems = []
    if unfinished:
        problems.append(f"runs not created or not ended {180} s after the last fire time: {unfinished}")
    if not rec["alive"]:
        problems.append("the server died")
    if any(len(per[b]) != npipes for b in bounds):
        problems.append("a fire time did not get one run per pipeline: "
                        + ", ".join(f"{iso(b)[:5]} {len(per[b])}" for b in bounds))
    if rec["lag_max"] is not None and rec["lag_max"] > 1000:
        n_over = sum(1 for v in all_lag if v > 1000)
        problems.append(f"lag over 1 s: max {rec['lag_max']} ms, {n_over} of {len(all_lag)} runs over 1 s")
    for p in problems:
        print(f"  PROBLEM: {p}")
    if lines:
        print(f"  the server logged {len(lines)} warning/error line(s); first ones:")
        for l in lines[:8]:
            print(f"    {l[:220]}")


# --- summary ------------------------------------------------------------------------------

def cmd_summary(results):
    recs = [json.loads(l) for l in open(results)] if os.path.exists(results) else []
    print("== Summary ==")
    for r in recs:
        if r["part"] == "history":
            print(f"history: {r['runs']} runs ({r['pipes']} pipelines, 3 tasks each; "
                  + ", ".join(f"{k} {v}" for k, v in sorted(r['states'].items()))
                  + f") made as {r['method']} in {r['seconds']} s ({r['runs_per_s']:.0f} runs/s)")
    wrks = [r for r in recs if r["part"] == "wrk"]
    if wrks:
        base = next((r for r in wrks if r["name"] == "health"), None)
        w = wrks[0]
        print(f"HTTP latency under load: wrk -t{w['threads']} -c{w['conns']} -d{w['secs']}s on loopback, "
              f"wrk and server sharing {os.cpu_count()} cores")
        print(f"  {'endpoint':<52} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'p50/health':>10} {'errors':>7}")
        for r in wrks:
            ratio = (f"{r['p50_ms'] / base['p50_ms']:.1f}x" if base and base.get("p50_ms") else "-")
            errs = sum(r.get("errors", {}).values())
            flag = "" if not (errs or r.get("check") or r.get("check_after") or not r.get("alive", True)) else "  PROBLEM"
            noisy = "  (noisy)" if r.get("other_cores", 0) > 0.2 else ""
            print(f"  GET {r['path'][:48]:<48} {r['rps']:8.0f} {r['p50_ms']:7.2f} {r['p99_ms']:7.2f} "
                  f"{ratio:>10} {errs:7d}{flag}{noisy}")
    for r in recs:
        if r["part"] != "sched" or "lag_p50" not in r:
            if r["part"] == "sched":
                print(f"scheduler ({r['label']}): {r.get('problem')}")
            continue
        done = "-" if r["all_done_ms"] is None else f"{r['all_done_ms'] / 1000:.1f} s"
        over = " PROBLEM: lag > 1 s" if (r["lag_max"] or 0) > 1000 else ""
        print(f"scheduler ({r['label']}): {r['npipes']} pipelines x {len(r['bounds'])} fire times = "
              f"{r['runs']} runs; lag min {min(b['lag_min'] for b in r['per_bound'] if b['lag_min'] is not None) if r['runs'] else '-'} ms, p50 {r['lag_p50']} ms, p99 {r['lag_p99']} ms, max {r['lag_max']} ms; "
              f"first task p50 {r['start_p50']} / p99 {r['start_p99']} ms; all {r['npipes']} created "
              f"within {r['all_created_ms'] / 1000:.1f} s, all ended within {done} of the fire time; "
              f"/metrics mean {r['hist_mean_ms'] or 0:.0f} ms, p50 <= {r['hist_p50_le']} s, "
              f"p99 <= {r['hist_p99_le']} s{over}")


def main():
    cmds = dict(history=cmd_history, depth=cmd_depth, midrun=cmd_midrun, wrk=cmd_wrk, sched=cmd_sched,
                summary=cmd_summary)
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    cmds[sys.argv[1]](*sys.argv[2:])


if __name__ == "__main__":
    main()
