#!/usr/bin/env python3
"""Overview latency with a long history (issue 5's target: under 300 ms of server time
with 200 pipelines and 100,000 runs).

Makes a project of N pipelines, lets `cauce server` create the store, then inserts
RUNS rows shaped like real ones (ids sorted by time over the last 40 days, 6% failed)
straight into the SQLite store, restarts the server and times GET /api/v1/overview
sequentially (one request at a time, so the time is server time plus loopback), next to
GET /health as the floor. Usage: bench/overview_bench.py CAUCE_BINARY [PIPELINES] [RUNS]
"""
import json, os, random, re, signal, sqlite3, statistics, subprocess, sys, tempfile, time
import urllib.request

binary = sys.argv[1]
pipes = int(sys.argv[2]) if len(sys.argv) > 2 else 200
runs = int(sys.argv[3]) if len(sys.argv) > 3 else 100_000
token = "bench-operator-token-0123456789"
root = tempfile.mkdtemp(prefix="cauce-overview-")
os.makedirs(f"{root}/pipelines")
with open(f"{root}/cauce.yaml", "w") as f:
    f.write("name: bench\nserver:\n  listen: 127.0.0.1:0\n  tokens:\n    - {name: ops, token: \"${T}\", role: operator}\n")
for i in range(pipes):
    with open(f"{root}/pipelines/p{i:03}.yaml", "w") as f:
        f.write(f"schedule: \"{i % 60} * * * *\"\nsla: 2h\ntasks:\n  extract: {{run: \"true\", category: extraction}}\n  load: {{run: \"true\", depends_on: [extract], category: load}}\n")

def start():
    env = dict(os.environ, T=token)
    p = subprocess.Popen([binary, "--project", root, "server"], env=env, stderr=subprocess.PIPE, text=True)
    for line in p.stderr:
        m = re.search(r"listening on http://(\S+)", line)
        if m:
            return p, m.group(1)
    raise SystemExit("server did not start")

def stop(p):
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=30)

p, addr = start()
stop(p)
db = sqlite3.connect(f"{root}/.cauce/state.db")
now = int(time.time() * 1000)
span = 40 * 24 * 3600 * 1000
rows = []
for n in range(runs):
    created = now - span + n * span // runs
    rid = time.strftime("%Y%m%dT%H%M%S", time.gmtime(created / 1000)) + f"{created % 1000:03d}-{n % 65536:04x}"
    state = "failed" if random.random() < 0.06 else "success"
    pipe = f"p{random.randrange(pipes):03}"
    rows.append((rid, pipe, f"{root}/pipelines/{pipe}.yaml", root, "tasks: {}", state, "{}", '["extract","load"]', "{}",
                 time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(created / 1000)), "schedule", created, created + random.randrange(500, 90_000)))
db.executemany("INSERT INTO runs (id, pipeline, pipeline_file, base_dir, source, state, params, selection, options, logical_date, trigger_kind, created_at, ended_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
db.commit()
db.close()
p, addr = start()

def timed(path, n):
    out = []
    for _ in range(n):
        req = urllib.request.Request(f"http://{addr}{path}", headers={"Authorization": f"Bearer {token}"})
        t = time.perf_counter()
        body = urllib.request.urlopen(req).read()
        out.append((time.perf_counter() - t) * 1000)
    return out, body

timed("/api/v1/overview", 3)  # warm the page cache
health, _ = timed("/health", 50)
ov, body = timed("/api/v1/overview", 30)
doc = json.loads(body)
stop(p)
q = lambda v, x: sorted(v)[min(len(v) - 1, int(len(v) * x))]
print(f"history: {runs} runs over 40 days, {pipes} pipelines (SQLite); overview answer {len(body)/1024:.0f} KiB, {len(doc['pipelines'])} pipelines")
print(f"GET /health           p50 {statistics.median(health):7.2f} ms  p90 {q(health, .9):7.2f} ms")
print(f"GET /api/v1/overview  p50 {statistics.median(ov):7.2f} ms  p90 {q(ov, .9):7.2f} ms  max {max(ov):7.2f} ms  (target < 300 ms)")
subprocess.run(["rm", "-rf", root])
