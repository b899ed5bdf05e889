#!/usr/bin/env bash
# Steady load, no fault: does the cluster stay put while it works for minutes?
#
# 3 tanvrit replicas (loopback, a snapshot every 10,000 entries) take job submissions
# from a client that does not retry (`tanvrit --retries 0 bench submit`), all sent to
# the leader, for SECONDS at each concurrency; then a 3-member etcd 3.4 (Debian's, same
# heartbeat 500 ms / election 2,500 ms, --snapshot-count 10000) takes 256-byte puts from
# the same Rust driver at the same concurrencies. Printed per run: requests/s, p50/p99/max,
# requests that failed (anything but a 200), elections (Raft term at the end minus at the
# start), and for tanvrit the snapshots built and the worst log-append and apply stalls
# the replicas logged.
#
# Usage: bench/steady.sh [seconds-per-level] [concurrencies] [profiles]
#   e.g. bench/steady.sh 600 16,64 default,lan   (the issue's 10-minute runs)
#        bench/steady.sh 90 16 default           (a quick look)
# Environment: TANVRIT_BIN (default: a release build of this tree), SNAPSHOT_EVERY
# (10000), RETENTION (the replicas' TANVRIT_RETENTION_JOBS when set), KEEP_WORK=1 keeps
# the replicas' logs, ETCD=0 skips etcd, TANVRIT=0 runs etcd alone.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-90}
levels=${2:-16,64}
profiles=${3:-default}
snapshot_every=${SNAPSHOT_EVERY:-10000}

source bench/lib.sh
ensure_etcd
if [[ -z ${TANVRIT_BIN:-} ]]; then
  cargo build --release -p tanvrit >/dev/null
  bin=$PWD/target/release/tanvrit
else
  bin=$TANVRIT_BIN
fi
work=$(mktemp -d)
key=bench-admin-key-0123456789
secret=bench-cluster-secret-0123456789
cleanup() {
  stop_all
  if [[ ${KEEP_WORK:-0} == 1 ]]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# metric ADDR NAME: one unlabelled gauge/counter from /metrics.
metric() {
  curl -s "$1/metrics" | awk -v n="$2" '$1 == n { print $2 }'
}

# max_term ADDRS: the highest Raft term any replica reports.
max_term() {
  local best=0 a t
  for a in ${1//,/ }; do
    t=$(metric "$a" tanvrit_raft_term)
    t=${t:-0}
    ((t > best)) && best=$t
  done
  echo "$best"
}

sum_metric() {
  local total=0 a v
  for a in ${1//,/ }; do
    v=$(metric "$a" "$2")
    total=$((total + ${v:-0}))
  done
  echo "$total"
}

# tanvrit_cluster NAME PROFILE: starts 3 replicas, sets $addrs and $leader.
tanvrit_cluster() {
  local name=$1 profile=$2 n=3 i
  read -r -a ports <<<"$(free_ports $((2 * n)))"
  local peers=""
  for ((i = 0; i < n; i++)); do
    peers+="${peers:+,}r$((i + 1))=127.0.0.1:${ports[$((n + i))]}"
  done
  addrs=""
  for ((i = 0; i < n; i++)); do
    local dir=$work/$name/r$((i + 1))
    mkdir -p "$dir"
    local env=(TANVRIT_BOOTSTRAP_KEY=$key RUST_LOG=info TANVRIT_CLUSTER_RAFT=true
      TANVRIT_CLUSTER_SECRET=$secret TANVRIT_PEERS=$peers TANVRIT_REPLICA_ID=r$((i + 1))
      TANVRIT_RAFT_PROFILE=$profile TANVRIT_SNAPSHOT_EVERY=$snapshot_every)
    [[ -n ${RETENTION:-} ]] && env+=(TANVRIT_RETENTION_JOBS=$RETENTION)
    env "${env[@]}" "$bin" server --data-dir "$dir" --api-addr "127.0.0.1:${ports[$i]}" \
      >"$dir/out.log" 2>"$dir/err.log" &
    pids+=($!)
    addrs+="${addrs:+,}http://127.0.0.1:${ports[$i]}"
  done
  leader=""
  for _ in $(seq 300); do
    for a in ${addrs//,/ }; do
      if [[ $(metric "$a" tanvrit_raft_is_leader) == 1 ]] &&
        TANVRIT_ADDR=$a TANVRIT_API_KEY=$key $bin --retries 0 cluster topology >/dev/null 2>&1; then
        leader=$a
        return 0
      fi
    done
    sleep 0.1
  done
  echo "no leader: $addrs" >&2
  return 1
}

etcd_leader() {
  ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint status -w json |
    python3 -c 'import json,sys; s=json.load(sys.stdin); print([e["Endpoint"] for e in s if e["Status"]["leader"]==e["Status"]["header"]["member_id"]][0])'
}

etcd_term() {
  ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint status -w json |
    python3 -c 'import json,sys; print(max(e["Status"]["raftTerm"] for e in json.load(sys.stdin)))'
}

# worst_ms NAME DIR...: the largest `ms=` of the log lines whose message contains NAME.
worst_ms() {
  local pattern=$1
  shift
  { cat "$@" 2>/dev/null | grep -F "$pattern" | grep -o 'ms=[0-9]*' | cut -d= -f2 |
    sort -n | tail -1; } || true
}

echo "# $(nproc) cores, $(uname -r); ${seconds}s per level, 1s warm-up; a snapshot every $snapshot_every entries; $(etcd --version | head -1)"
printf '%-28s %6s %9s %8s %8s %9s %7s %9s %9s %11s %11s\n' run clients "req/s" "p50 ms" "p99 ms" "max ms" errors elections snapshots "append ms" "apply ms"
for profile in ${profiles//,/ }; do
  [[ ${TANVRIT:-1} == 0 ]] && break
  for c in ${levels//,/ }; do
    tanvrit_cluster "t-$profile-$c" "$profile"
    before=$(max_term "$addrs")
    report=$(TANVRIT_ADDR=$leader TANVRIT_API_KEY=$key $bin --retries 0 --json bench submit \
      --concurrency "$c" --duration "${seconds}s" --warmup 1s)
    after=$(max_term "$addrs")
    snaps=$(sum_metric "$addrs" tanvrit_raft_snapshots_built_total)
    logs=("$work/t-$profile-$c"/r*/err.log "$work/t-$profile-$c"/r*/out.log)
    append=$(worst_ms "slow log append" "${logs[@]}")
    apply=$(worst_ms "slow apply" "${logs[@]}")
    stop_all
    echo "$report" | python3 -c '
import json, sys
r = json.load(sys.stdin)[0]
a = sys.argv[1:]
print("%-28s %6d %9.0f %8.2f %8.2f %9.1f %7d %9s %9s %11s %11s" % (
    "tanvrit 3 replicas " + a[0], r["concurrency"], r["per_second"], r["p50_ms"], r["p99_ms"],
    r["max_ms"], r["errors"], a[1], a[2], a[3] or "-", a[4] or "-"))
' "$profile" "$((after - before))" "$snaps" "${append:-}" "${apply:-}"
  done
done
[[ ${ETCD:-1} == 0 ]] && exit 0
for c in ${levels//,/ }; do
  etcd_cluster "etcd-$c" 3 --heartbeat-interval 500 --election-timeout 2500 \
    --snapshot-count 10000
  lead=$(etcd_leader)
  before=$(etcd_term)
  report=$($bin --json bench etcd-put --endpoints "$lead" --concurrency "$c" \
    --duration "${seconds}s" --warmup 1s --value-size 256)
  after=$(etcd_term)
  stop_all
  echo "$report" | python3 -c '
import json, sys
r = json.load(sys.stdin)[0]
print("%-28s %6d %9.0f %8.2f %8.2f %9.1f %7d %9s %9s %11s %11s" % (
    "etcd 3 members", r["concurrency"], r["per_second"], r["p50_ms"], r["p99_ms"],
    r["max_ms"], r["errors"], sys.argv[1], "-", "-", "-"))
' "$((after - before))"
done
