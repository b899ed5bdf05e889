#!/usr/bin/env bash
# Submit-to-running latency with real agents: a release `tanvrit server` and N real
# `tanvrit agent` processes on this machine, then `tanvrit bench start-latency`.
# Usage: bench/agents.sh [agents] [jobs] [concurrent submitters]
# TANVRIT_BENCH_BIN=path runs that binary instead of building this tree (to compare two
# builds side by side in one session); TANVRIT_BENCH_AGENT_FLAGS adds agent flags (say
# `--isolation none`, to see what the sandbox costs).
set -euo pipefail
cd "$(dirname "$0")/.."
agents=${1:-4}
jobs=${2:-500}
concurrency=${3:-8}
if [ -n "${TANVRIT_BENCH_BIN:-}" ]; then
  bin=$TANVRIT_BENCH_BIN
else
  cargo build --release -p tanvrit >/dev/null
  bin=${CARGO_TARGET_DIR:-$PWD/target}/release/tanvrit
fi
work=$(mktemp -d)
port=${TANVRIT_BENCH_PORT:-17080}
key=bench-admin-key-0123456789
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null; rm -rf "$work"' EXIT
TANVRIT_BOOTSTRAP_KEY=$key RUST_LOG=warn $bin server --data-dir "$work/server" \
  --api-addr 127.0.0.1:$port >"$work/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q "listening on" "$work/server.log" && break; sleep 0.1; done
export TANVRIT_ADDR=http://127.0.0.1:$port TANVRIT_API_KEY=$key
for n in $(seq "$agents"); do
  # One key per agent (an agent key acts for the node it registers first), kept in a
  # file so the secret is not in the process list.
  $bin key create --scope agent --name "bench-$n" --json |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["secret"])' >"$work/agent-$n.key"
  RUST_LOG=warn $bin agent --key-file "$work/agent-$n.key" --data-dir "$work/agent-$n" --name "bench-$n" \
    --cpu-millis 4000 --memory-mb 4096 ${TANVRIT_BENCH_AGENT_FLAGS:-} >"$work/agent-$n.log" 2>&1 &
  pids+=($!)
done
for n in $(seq "$agents"); do
  for _ in $(seq 100); do grep -q "registered node" "$work/agent-$n.log" && break; sleep 0.1; done
done
echo "== submit to running ($agents agents, $jobs jobs, $(nproc) cores)"
$bin bench start-latency --jobs "$jobs" --concurrency "$concurrency"
