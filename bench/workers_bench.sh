#!/usr/bin/env bash
# Worker throughput (issue 7's benchmark, not a test): one run of TASKS independent no-op
# tasks (`exec: [true]`, default 10,000) executed by 1, 2 and 4 `cauce worker` processes on
# a PostgreSQL store, and the same run in local mode on SQLite. Prints tasks per second,
# the queue wait (an attempt's claim time minus the time it became claimable, p50/p99 from
# the store: with every task enqueued at once this is mostly the backlog, not the cost of
# a claim), then, with 4 workers, the claim latency of a chain of tasks that never queue
# behind each other; and, as the physical limit measured in the same run, the time this
# machine takes just to start the same number of `true` processes 8 at a time.
# Needs PostgreSQL on 127.0.0.1:5432 (PG_URL to change). Release build.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cauce/target}"
# CAUCE_BIN=path uses a binary already built instead.
if [ -z "${CAUCE_BIN:-}" ]; then cargo build --release --quiet; fi
bin="${CAUCE_BIN:-$CARGO_TARGET_DIR/release/cauce}"
tasks="${TASKS:-10000}"
slots="${SLOTS:-8}"
pg="${PG_URL:-postgres://postgres@127.0.0.1:5432/test}"
export PGOPTIONS="-c client_min_messages=warning"
work="$(mktemp -d "${TMPDIR:-/tmp}/cauce-workers-bench.XXXXXX")"
pids=()
cleanup() {
    for p in "${pids[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/p/pipelines"
{
    echo "tasks:"
    for i in $(seq 1 "$tasks"); do echo "  t$i: {exec: [\"true\"]}"; done
} > "$work/p/pipelines/noop.yaml"

now() { date +%s.%N; }
rate() { python3 -c "import sys; n,a,b=float(sys.argv[1]),float(sys.argv[2]),float(sys.argv[3]); print(f'{b-a:8.2f} s  {n/(b-a):8.0f} tasks/s')" "$@"; }

echo "cauce worker throughput: $tasks no-op tasks, $slots slots a worker, $(nproc) cores"
t0=$(now)
seq 1 "$tasks" | xargs -P 8 -n 64 sh -c 'for _ in "$@"; do /bin/true; done' _
t1=$(now)
base=$(python3 -c "print($t1-$t0)")
printf '%-28s %s\n' "baseline: start $tasks procs" "$(rate "$tasks" "$t0" "$t1")"

# Local mode on SQLite: the run's own process runs the attempts.
cat > "$work/p/cauce.yaml" <<EOF
max_workers: $slots
EOF
t0=$(now)
"$bin" --project "$work/p" run noop -q >/dev/null
t1=$(now)
printf '%-28s %s   (%.1fx baseline)\n' "local, SQLite" "$(rate "$tasks" "$t0" "$t1")" "$(python3 -c "print(($t1-$t0)/$base)")"

for n in 1 2 4; do
    schema="cauce_bench_$$_$n"
    psql "$pg" -qAt -c "DROP SCHEMA IF EXISTS $schema CASCADE; CREATE SCHEMA $schema" >/dev/null
    store="$pg?options=-c%20search_path%3D$schema"
    cat > "$work/p/cauce.yaml" <<EOF
store: "$store"
executor: workers
EOF
    pids=()
    for i in $(seq 1 "$n"); do
        CAUCE_LOG=warn "$bin" --project "$work/p" worker --slots "$slots" --poll 20ms 2>"$work/worker$i.log" &
        pids+=($!)
    done
    sleep 1
    t0=$(now)
    "$bin" --project "$work/p" run noop -q >/dev/null
    t1=$(now)
    lat=$(psql "$pg" -qAt -c "SET search_path TO $schema; SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY started_at - available_at)::numeric, 1) || ' ms / ' || round(percentile_cont(0.99) WITHIN GROUP (ORDER BY started_at - available_at)::numeric, 1) || ' ms' FROM attempts")
    printf '%-28s %s   (%.1fx baseline)   queue wait p50/p99 %s\n' "$n worker(s), PostgreSQL" "$(rate "$tasks" "$t0" "$t1")" "$(python3 -c "print(($t1-$t0)/$base)")" "$lat"
    if [ "$n" = 4 ]; then
        # Claim latency without a backlog: a chain of CHAIN tasks, each claimable only
        # when the one before it has ended, so its queue wait is the claim alone.
        chain="${CHAIN:-200}"
        {
            echo "tasks:"
            echo "  c1: {exec: [\"true\"]}"
            for i in $(seq 2 "$chain"); do echo "  c$i: {exec: [\"true\"], depends_on: [c$((i - 1))]}"; done
        } > "$work/p/pipelines/chain.yaml"
        t0=$(now)
        "$bin" --project "$work/p" run chain -q >/dev/null
        t1=$(now)
        lat=$(psql "$pg" -qAt -c "SET search_path TO $schema; SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY a.started_at - a.available_at)::numeric, 1) || ' ms / ' || round(percentile_cont(0.99) WITHIN GROUP (ORDER BY a.started_at - a.available_at)::numeric, 1) || ' ms' FROM attempts a JOIN runs r ON r.id = a.run_id WHERE r.pipeline = 'chain'")
        printf '%-28s %s   claim latency p50/p99 %s   (%.0f ms a step)\n' "chain of $chain, 4 workers" "$(rate "$chain" "$t0" "$t1")" "$lat" "$(python3 -c "print(($t1-$t0)*1000/$chain)")"
    fi
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait "${pids[@]}" 2>/dev/null || true
    pids=()
    psql "$pg" -qAt -c "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null
done
echo "target: at least 1000 tasks/s with 4 workers"
