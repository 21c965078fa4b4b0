#!/usr/bin/env bash
# bench/server_bench.sh — how fast does `cauce server` answer, and how late do schedules fire?
#
# WHAT IT MEASURES
#   Part 1 — history. A project with 5 pipelines (p1..p5), each extract -> transform -> load,
#   every task a shell one-liner; `load` fails when the run id's random 4-hex-digit suffix ends
#   in 0, so 1 run in 16 fails, independently of pipeline and time (realistic: state filters
#   then select a subset, and failed attempts exist). The
#   history is made of REAL runs: BENCH_RUNS (default 10,000) runs started through the API
#   (POST /api/v1/pipelines/pN/runs, round robin), at most 16 executing at once, executed by
#   the server as in production (store rows, log files, reports). Creating them takes about
#   a minute on this machine, so no rows are forged. The store is then checked (runs,
#   task_runs, attempts, states) and the server restarted, idle, over that store.
#
#   Part 2 — HTTP latency under load, on loopback, with wrk (closed loop: each connection
#   sends its next request when the answer arrives). BENCH_WRK_THREADS threads (2) and
#   BENCH_WRK_CONNS connections (16), BENCH_WRK_SECS seconds (15) per endpoint after
#   BENCH_WRK_WARMUP seconds (2) of warm-up:
#     health    GET /health                     no token, no store: the floor of this HTTP stack
#     me        GET /api/v1/me                  token check + JSON, no store
#     list      GET /api/v1/runs?limit=50       newest page of the whole history
#     filtered  GET /api/v1/runs?limit=50&pipeline=p3&state=success
#     rare      GET /api/v1/runs?limit=50&pipeline=p3&state=failed   (~1.25% of the runs match)
#   For the three pages, the script prints how many of the newest rows of the history hold the
#   page's 50 runs: a store that walks the runs newest first and filters reads that many.
#     detail    GET /api/v1/runs/{id}           a run in the middle of the history, with its
#                                               3 tasks and their attempts
#   Each endpoint is first called once and its answer checked (200, 50 runs newest first,
#   filter respected, 3 tasks...), and again after the load. The server and wrk share the
#   machine's 2 cores: wrk's own CPU is reported next to the server's, and a number measured
#   this way is a floor-to-floor comparison, not the server's capacity on dedicated cores.
#   p50/health = the endpoint's median latency over /health's, measured in the same run:
#   how much the store and the JSON of runs cost above the bare HTTP round trip.
#
#   Part 3 — scheduler lag. A second project with BENCH_SCHED_PIPES (500) pipelines, each
#   `schedule: "* * * * *"` with one task `true`: every minute 500 runs are due at once. The
#   server is started; once its first pass has recorded every schedule (first sight fires
#   nothing), the next BENCH_SCHED_MINUTES (2) whole minutes are measured:
#     /metrics  cauce_scheduler_lag_seconds (due time -> run created, observed after the
#               transaction that creates the run): mean = sum/count; p50/p99 only as the
#               upper bound of a bucket (buckets 1 ms x 4^k: 1, 4, 16, 64, 256 ms, 1.024 s...)
#     store     exact lag per run: runs.created_at (ms) - logical_date (the fire time), for
#               trigger_kind = 'schedule'; the first task's start (task_runs.started_at) the
#               same way; and when the last of the 500 runs was created and when it ended.
#   With --postgres the same is repeated on PostgreSQL (store: postgres://postgres@127.0.0.1
#   :5432/cauce_bench_PID, created and dropped by this script; trust auth on loopback).
#
# WHAT IS A PROBLEM (printed as PROBLEM, never worked around)
#   a non-2xx answer or a socket error under load, a wrong answer, the server dying, a
#   schedule fire time without its 500 runs, runs not ended 3 min after the fire time, a
#   scheduler lag over 1 s, warnings or errors in the server's log.
#
# USAGE (from the repository root)
#   bash bench/server_bench.sh [--quick] [--postgres]
#     --quick     smoke check: 500 runs of history, 3 s of wrk per endpoint, 50 scheduled
#                 pipelines and one fire time (still waits for a minute boundary: ~2 min)
#     --postgres  also measure the scheduler on PostgreSQL
# Environment:
#   CAUCE_BIN           cauce binary (default: $CARGO_TARGET_DIR/release/cauce, else
#                       target/release/cauce; built with `cargo build --release` if missing)
#   BENCH_RUNS BENCH_PIPES BENCH_WRK_THREADS BENCH_WRK_CONNS BENCH_WRK_SECS BENCH_WRK_WARMUP
#   BENCH_SCHED_PIPES BENCH_SCHED_MINUTES    override the sizes above
#   BENCH_PG_URL        PostgreSQL server URL without database (default
#                       postgres://postgres@127.0.0.1:5432)
#   BENCH_WAIT_IDLE=S   before parts 2 and 3, wait up to S seconds for the machine to be idle
#                       (less than 0.1 CPU busy over 3 s; default 0: don't wait). Rows measured
#                       while other processes used more than 0.2 cores are marked noisy.
#   BENCH_KEEP=1        keep the temporary folder (projects, stores, server logs)
#   TMPDIR              where the temporary folder goes (mktemp -d)
# Needs bash, python3 (standard library), wrk (installed with apt-get if missing), psql for
# --postgres. Writes only under its mktemp -d folder (and the PostgreSQL database it
# creates); every server it starts is stopped on exit, however the script ends.

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
QUICK=0
POSTGRES=0
for arg in "$@"; do
    case $arg in
        --quick) QUICK=1 ;;
        --postgres) POSTGRES=1 ;;
        -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench: unknown argument $arg (use --quick, --postgres)" >&2; exit 2 ;;
    esac
done
if ((QUICK)); then
    d_runs=500 d_secs=3 d_warm=1 d_spipes=50 d_smin=1
else
    d_runs=10000 d_secs=15 d_warm=2 d_spipes=500 d_smin=2
fi
RUNS=${BENCH_RUNS:-$d_runs}
PIPES=${BENCH_PIPES:-5}
WRK_THREADS=${BENCH_WRK_THREADS:-2}
WRK_CONNS=${BENCH_WRK_CONNS:-16}
WRK_SECS=${BENCH_WRK_SECS:-$d_secs}
WRK_WARMUP=${BENCH_WRK_WARMUP:-$d_warm}
SCHED_PIPES=${BENCH_SCHED_PIPES:-$d_spipes}
SCHED_MINUTES=${BENCH_SCHED_MINUTES:-$d_smin}
PG_URL=${BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432}
((PIPES >= 3)) || { echo "bench: BENCH_PIPES must be at least 3 (p3 is queried)" >&2; exit 2; }

need() { command -v "$1" >/dev/null 2>&1 || { echo "bench: $1 is required" >&2; exit 2; }; }
need python3
if ! command -v wrk >/dev/null 2>&1; then
    echo "bench: installing wrk (apt-get install wrk)..." >&2
    sudo=""; [[ $(id -u) == 0 ]] || sudo=sudo
    $sudo apt-get install -y -qq wrk >/dev/null 2>&1 ||
        { $sudo apt-get update -qq >/dev/null && $sudo apt-get install -y -qq wrk >/dev/null; }
fi
need wrk
((POSTGRES == 0)) || need psql

# --- the binary -------------------------------------------------------------------------
if [[ -n "${CAUCE_BIN:-}" ]]; then
    CAUCE=$CAUCE_BIN
else
    CAUCE=${CARGO_TARGET_DIR:-$ROOT/target}/release/cauce
    if [[ ! -x "$CAUCE" ]]; then
        echo "bench: building the release binary (cargo build --release)..." >&2
        (cd "$ROOT" && cargo build --release --quiet)
    elif [[ -n "$(find "$ROOT/src" -newer "$CAUCE" -print -quit 2>/dev/null)" ]]; then
        echo "bench: note: $CAUCE is older than some of src/; run cargo build --release to measure the current code" >&2
    fi
fi
[[ -x "$CAUCE" ]] || { echo "bench: no cauce binary at $CAUCE" >&2; exit 2; }
CAUCE=$(cd "$(dirname "$CAUCE")" && pwd)/$(basename "$CAUCE")

WORK=$(mktemp -d -t cauce-server-bench.XXXXXX)
RESULTS=$WORK/results.jsonl
PY=$HERE/server_bench.py
LUA=$HERE/server_bench.lua
PG_DB=""
SERVERS=()   # pids of the servers this script started

# stop_server PID: Ctrl-C (runs are cancelled at once), then SIGKILL after 10 s.
stop_server() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -INT "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "bench: server $pid still up 10 s after SIGINT; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local pid
    for pid in "${SERVERS[@]}"; do stop_server "$pid"; done
    if [[ -n $PG_DB ]]; then
        psql "$PG_URL/postgres" -X -q -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 ||
            echo "bench: could not drop database $PG_DB" >&2
    fi
    if [[ "${BENCH_KEEP:-0}" == 1 ]]; then echo "bench: kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

OPS_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
export OPS_TOKEN

# new_project DIR [STORE_URL]: cauce.yaml with a free loopback port and the operator token.
new_project() {
    mkdir -p "$1/pipelines"
    {
        echo "name: bench"
        [[ -n ${2:-} ]] && echo "store: $2"
        echo "server:"
        echo "  listen: 127.0.0.1:0"
        echo "  tokens:"
        echo '    - {name: ops, token: "${OPS_TOKEN}", role: operator}'
    } >"$1/cauce.yaml"
}

# start_server DIR LOG: starts `cauce server`, sets SERVER_PID and SERVER_ADDR (host:port).
start_server() {
    local dir=$1 log=$2 i
    "$CAUCE" --project "$dir" server >"$log.out" 2>"$log" &
    SERVER_PID=$!
    SERVERS+=("$SERVER_PID")
    for ((i = 0; i < 300; i++)); do
        SERVER_ADDR=$(grep -o 'listening on http://[^ ]*' "$log" 2>/dev/null | head -n 1 | sed 's|.*http://||') || true
        [[ -n $SERVER_ADDR ]] && return 0
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "bench: the server did not start:" >&2
            tail -n 20 "$log" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "bench: the server printed no address within 30 s:" >&2
    tail -n 20 "$log" >&2
    exit 1
}

# server_log_report LOG: the server's warning/error lines (default log level: warn).
server_log_report() {
    local n
    n=$(grep -vc 'listening on\|^cauce server interrupted' "$1" || true)
    if ((n > 0)); then
        echo "  PROBLEM: the server logged $n warning/error line(s); first ones:"
        grep -v 'listening on\|^cauce server interrupted' "$1" | head -n 8 | cut -c1-220 | sed 's/^/    /'
    else
        echo "  server log: no warnings or errors"
    fi
}

# wait_idle: see BENCH_WAIT_IDLE.
wait_idle() {
    local limit=${BENCH_WAIT_IDLE:-0} waited=0 b0 b1
    ((limit > 0)) || return 0
    while ((waited < limit)); do
        b0=$(awk '/^cpu /{print $2 + $3 + $4 + $7 + $8; exit}' /proc/stat)
        sleep 3
        b1=$(awk '/^cpu /{print $2 + $3 + $4 + $7 + $8; exit}' /proc/stat)
        if (((b1 - b0) * 100 / $(getconf CLK_TCK) < 30)); then return 0; fi
        waited=$((waited + 3))
    done
    echo "bench: the machine did not become idle within ${limit}s; measuring anyway" >&2
}

echo "cauce:   $CAUCE ($("$CAUCE" --version 2>/dev/null || echo '?'), built $(date -r "$CAUCE" '+%F %T'))"
dirty=""
[[ -z "$(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ]] || dirty=" (+ uncommitted changes in src/)"
echo "tree:    $(git -C "$ROOT" log -1 --format='%h %s' 2>/dev/null | cut -c1-80 || echo '?')$dirty"
echo "wrk:     $(wrk --version 2>&1 | head -n 1 | cut -d' ' -f1-2)"
echo "machine: $(nproc) cores, $(uname -sr), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "workdir: $WORK ($(df -T "$WORK" | awk 'NR == 2 {print $2}'))"
((QUICK)) && echo "mode:    --quick (smoke check; figures not comparable with a full run)"
echo

# --- part 1: history ----------------------------------------------------------------------
H=$WORK/history
new_project "$H"
for ((i = 1; i <= PIPES; i++)); do
    cat >"$H/pipelines/p$i.yaml" <<'EOF'
tasks:
  extract: "true"
  transform:
    run: "true"
    depends_on: [extract]
  load:
    # fails when the run id's random suffix ends in 0 (1 run in 16), so the history holds
    # failed runs too, spread evenly over pipelines and time
    run: "case {{ run.id }} in *0) exit 1;; esac"
    depends_on: [transform]
EOF
done
"$CAUCE" --project "$H" validate >/dev/null
H_STORE=sqlite:$H/.cauce/state.db
echo "== Part 1: history: $RUNS real runs ($PIPES pipelines x $((RUNS / PIPES)), 3 tasks each) through the API =="
start_server "$H" "$WORK/history-create.log"
python3 "$PY" history "$SERVER_ADDR" "$OPS_TOKEN" "$H_STORE" "$RUNS" "$PIPES" "$RESULTS"
server_log_report "$WORK/history-create.log"
stop_server "$SERVER_PID"
echo "  store: $(du -h "$H/.cauce/state.db" | cut -f1) state.db; $(find "$H/.cauce/logs" -type f | wc -l) attempt log files"
echo

# --- part 2: latency under load -----------------------------------------------------------
wait_idle
start_server "$H" "$WORK/history-serve.log"
MID=$(python3 "$PY" midrun "$H_STORE")
echo "== Part 2: latency under load: wrk -t$WRK_THREADS -c$WRK_CONNS, ${WRK_SECS}s per endpoint after ${WRK_WARMUP}s warm-up =="
echo "   server freshly started over the $RUNS-run store (SQLite, WAL); wrk on the same $(nproc) cores."
echo "   cpu columns: cores used on average during the measured interval by the server, by wrk,"
echo "   and by other processes on the machine (should be ~0; otherwise the figures are noisy)."
python3 "$PY" depth "$H_STORE" p3
printf '  %-9s %9s %8s %8s %8s %8s %7s %8s %6s %5s %5s\n' endpoint req/s p50_ms p90_ms p99_ms max_ms resp_KB errors server wrk other
bench_wrk() { # NAME PATH auth|noauth
    python3 "$PY" wrk "$1" "$2" "$3" "$SERVER_ADDR" "$OPS_TOKEN" "$WRK_THREADS" "$WRK_CONNS" \
        "$WRK_SECS" "$WRK_WARMUP" "$SERVER_PID" "$LUA" "$RESULTS"
}
bench_wrk health "/health" noauth
bench_wrk me "/api/v1/me" auth
bench_wrk list "/api/v1/runs?limit=50" auth
bench_wrk filtered "/api/v1/runs?limit=50&pipeline=p3&state=success" auth
bench_wrk rare "/api/v1/runs?limit=50&pipeline=p3&state=failed" auth
bench_wrk detail "/api/v1/runs/$MID" auth
server_log_report "$WORK/history-serve.log"
stop_server "$SERVER_PID"
echo

# --- part 3: scheduler lag ----------------------------------------------------------------
# sched_part LABEL STORE_URL_OR_EMPTY
sched_part() {
    local label=$1 url=$2 dir=$WORK/sched-$1 store i
    new_project "$dir" "$url"
    for ((i = 1; i <= SCHED_PIPES; i++)); do
        printf 'schedule: "* * * * *"\ntasks:\n  a: "true"\n' >"$dir/pipelines/s$i.yaml"
    done
    store=${url:-sqlite:$dir/.cauce/state.db}
    echo "== Part 3 ($label): scheduler lag, $SCHED_PIPES pipelines due every minute, $SCHED_MINUTES fire time(s) =="
    wait_idle
    start_server "$dir" "$WORK/sched-$label.log"
    python3 "$PY" sched "$label" "$SERVER_ADDR" "$SERVER_PID" "$store" "$SCHED_PIPES" \
        "$SCHED_MINUTES" "$WORK/sched-$label.log" "$RESULTS"
    stop_server "$SERVER_PID"
    echo
}
sched_part sqlite ""
if ((POSTGRES)); then
    PG_DB=cauce_bench_$$
    psql "$PG_URL/postgres" -X -q -c "CREATE DATABASE $PG_DB" >/dev/null
    sched_part postgres "$PG_URL/$PG_DB"
fi

python3 "$PY" summary "$RESULTS"
echo "(The server and wrk shared $(nproc) cores; /health is the floor of this HTTP stack on them.)"
