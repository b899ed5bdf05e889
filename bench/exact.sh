#!/usr/bin/env bash
# Credits and schedules benchmark, on a single-node server and on a 3-replica Raft cluster
# (loopback, LAN profile), release build:
#  1. ledger entries/s (`tanvrit bench ledger`): admin top-ups (one entry each) and
#     submit+cancel cycles (a credit hold and its release) at concurrency 1/16/64,
#     counted from the ledger's own timestamps;
#  2. schedule fire lag (`tanvrit bench schedules`): N active schedules, each firing
#     every 10 s with offsets spread over the 10 s, for a bounded time; lag = fired job's
#     created_at - its due time (both the server's), p50/p99/max.
# Workers are spread over every replica's address.
# Usage: bench/exact.sh [seconds-per-level] [schedules] [fire-seconds] [all|ledger|schedules]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
seconds=${1:-10}
schedules=${2:-1000}
fire_seconds=${3:-60}
what=${4:-all}
if [[ -z ${TANVRIT_BENCH_BIN:-} ]]; then
  cargo build --release -p tanvrit >/dev/null
fi
# TANVRIT_BENCH_BIN: measure another build (e.g. an older commit's) with the same script.
bin=${TANVRIT_BENCH_BIN:-$PWD/target/release/tanvrit}
work=$(mktemp -d)
key=bench-admin-key-0123456789
secret=bench-cluster-secret-0123456789
trap 'stop_all; rm -rf "$work"' EXIT

# start NAME REPLICAS: a single-node server (REPLICAS=0) or a Raft cluster; sets $addrs
# and waits until an admin request works (a leader wrote the admin key).
start() {
  local name=$1 n=$2 i count
  count=$((n == 0 ? 1 : n))
  read -r -a ports <<<"$(free_ports $((2 * count)))"
  local peers=""
  for ((i = 0; i < n; i++)); do
    peers+="${peers:+,}r$((i + 1))=127.0.0.1:${ports[$((count + i))]}"
  done
  addrs=""
  for ((i = 0; i < count; i++)); do
    local dir=$work/$name/r$((i + 1))
    mkdir -p "$dir"
    local env=(TANVRIT_BOOTSTRAP_KEY=$key RUST_LOG=error)
    if ((n > 0)); then
      env+=(TANVRIT_CLUSTER_RAFT=true TANVRIT_CLUSTER_SECRET=$secret TANVRIT_PEERS=$peers
        TANVRIT_REPLICA_ID=r$((i + 1)) TANVRIT_RAFT_PROFILE=lan)
    fi
    env "${env[@]}" "$bin" server --data-dir "$dir" --api-addr "127.0.0.1:${ports[$i]}" \
      >"$dir/out.log" 2>"$dir/err.log" &
    pids+=($!)
    addrs+="${addrs:+,}http://127.0.0.1:${ports[$i]}"
  done
  for _ in $(seq 300); do
    if TANVRIT_ADDR=$addrs TANVRIT_API_KEY=$key $bin --retries 0 cluster topology >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  echo "not ready: $addrs" >&2
  return 1
}

run() {
  if [[ $what != schedules ]]; then
    TANVRIT_ADDR=$addrs TANVRIT_API_KEY=$key $bin bench ledger --duration "${seconds}s"
  fi
  if [[ $what != ledger ]]; then
    TANVRIT_ADDR=$addrs TANVRIT_API_KEY=$key $bin bench schedules --schedules "$schedules" \
      --every 10 --duration "${fire_seconds}s"
  fi
}

echo "# $(nproc) cores, $(uname -r); ledger: ${seconds}s per level after 1s warm-up;" \
  "schedules: $schedules every 10 s for ${fire_seconds}s"
echo "== single node (no Raft)"
start single 0
run
stop_all
echo "== Raft, 3 replicas (LAN profile)"
start raft3 3
run
stop_all
