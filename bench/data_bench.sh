#!/usr/bin/env bash
# The data-plane benchmark (bench/data_bench.py): builds the binary to ship (the `dist`
# profile; PROFILE=release for a quicker build while trying changes), makes a
# virtualenv with DuckDB beside the build cache, generates the seeded inputs (5,000,000
# sales rows by default; ROWS=... to change) and compares cauce with DuckDB and psql \copy.
# Needs PostgreSQL on 127.0.0.1:5432 for L1 (BENCH_SKIP=L1 leaves it out).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cauce/target}"
profile="${PROFILE:-dist}"
case "$profile" in
    dist | release) ;;
    *) echo "PROFILE must be dist or release, not '$profile'" >&2; exit 2 ;;
esac
cargo build --profile "$profile" --quiet
venv="$HOME/.cache/cauce/venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import duckdb' 2>/dev/null || "$venv/bin/pip" install -q duckdb
work="${BENCH_DIR:-${TMPDIR:-/tmp}/cauce-data-bench}"
mkdir -p "$work"
python3 bench/data_bench.py "$CARGO_TARGET_DIR/$profile/cauce" "$venv/bin/python" "$work" "${ROWS:-5000000}"
