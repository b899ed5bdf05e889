#!/usr/bin/env bash
# Single-node benchmark: job submissions/s and p50/p99 latency over HTTP at concurrency
# 1/16/64 against a release `tanvrit server` on a fresh data directory, then the
# scheduler's placement rate on 10,000 queued jobs over 1,000 simulated nodes.
# Usage: bench/single-node.sh [seconds-per-level]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
cargo build --release -p tanvrit >/dev/null
bin=target/release/tanvrit
data=$(mktemp -d)
port=${TANVRIT_BENCH_PORT:-17070}
key=bench-admin-key-0123456789
trap 'kill $server 2>/dev/null || true; rm -rf "$data"' EXIT
TANVRIT_BOOTSTRAP_KEY=$key RUST_LOG=warn $bin server --data-dir "$data" --api-addr 127.0.0.1:$port >"$data/server.log" 2>&1 &
server=$!
for _ in $(seq 100); do grep -q "listening on" "$data/server.log" && break; sleep 0.1; done
echo "== submissions (single node, $(nproc) cores, ${seconds}s per level)"
TANVRIT_ADDR=http://127.0.0.1:$port TANVRIT_API_KEY=$key $bin bench submit --duration "${seconds}s"
echo "== placements (in process)"
$bin bench placement --jobs 10000 --nodes 1000
