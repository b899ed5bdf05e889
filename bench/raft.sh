#!/usr/bin/env bash
# Raft benchmark, side by side with etcd 3.4 in the same run on the same machine:
#  1. job submissions/s and p50/p99 at concurrency 1/16/64 (`tanvrit bench submit`)
#     against a single-node server, a 1-replica Raft cluster and a 3-replica Raft
#     cluster (loopback, LAN profile);
#  2. 256-byte puts/s at the same concurrencies against a 1-member and a 3-member etcd
#     cluster (`tanvrit bench etcd-put`: the same Rust HTTP driver, etcd's JSON gateway);
#  3. failover: kill -9 of the leader to the first acknowledged write on a survivor,
#     over N kills, for tanvrit (default profile and LAN profile) and etcd
#     (--heartbeat-interval 500 --election-timeout 2500) (`tanvrit bench failover`).
# Each 3-replica tanvrit run is made twice, TLS off (plain HTTP, shared secret) and TLS
# on (the API over TLS, replica RPC over mutual TLS, certificates from `tanvrit tls`).
# Workers of the load benches are spread over every member's address.
# Usage: bench/raft.sh [seconds-per-level] [kills]
#   BENCH_ONLY=tls bench/raft.sh 10   # only the 3-replica TLS off / on comparison
#   TANVRIT_BIN=target/debug/tanvrit  # use this binary instead of a release build
# etcd comes from Debian (`etcd-server`, `etcd-client`), installed here if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
kills=${2:-10}

only=${BENCH_ONLY:-all}

source bench/lib.sh
[[ $only == tls ]] || ensure_etcd
if [[ -n ${TANVRIT_BIN:-} ]]; then
  bin=$(realpath "$TANVRIT_BIN")
else
  cargo build --release -p tanvrit >/dev/null
  bin=$PWD/target/release/tanvrit
fi
work=$(mktemp -d)
key=bench-admin-key-0123456789
secret=bench-cluster-secret-0123456789
trap 'stop_all; rm -rf "$work"' EXIT

# The CA of TLS runs (`tanvrit_cluster ... tls`); clients get it as TANVRIT_CA_FILE.
pki=$work/pki
export TANVRIT_CLUSTER_ID=bench
$bin tls ca create --dir "$pki" >/dev/null
for i in 1 2 3; do $bin tls cert create --dir "$pki" --replica "$i" >/dev/null; done
export TANVRIT_CA_FILE=$pki/ca.pem

# Waits until the API at $1 takes an admin request (a leader wrote the admin key).
wait_ready() {
  for _ in $(seq 300); do
    if TANVRIT_ADDR=$1 TANVRIT_API_KEY=$key $bin --retries 0 cluster topology >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  echo "not ready: $1" >&2
  return 1
}

# tanvrit_cluster NAME REPLICAS [raft|single] [tls]: starts the replicas, sets $addrs.
tanvrit_cluster() {
  local name=$1 n=$2 raft=${3:-raft} tls=${4:-}
  read -r -a ports <<<"$(free_ports $((2 * n)))"
  local peers="" i
  for ((i = 0; i < n; i++)); do
    peers+="${peers:+,}r$((i + 1))=127.0.0.1:${ports[$((n + i))]}"
  done
  addrs=""
  for ((i = 0; i < n; i++)); do
    local dir=$work/$name/r$((i + 1))
    mkdir -p "$dir"
    local env=(TANVRIT_BOOTSTRAP_KEY=$key RUST_LOG=error)
    if [[ $raft == raft ]]; then
      env+=(TANVRIT_CLUSTER_RAFT=true TANVRIT_PEERS=$peers
        TANVRIT_REPLICA_ID=r$((i + 1)) TANVRIT_RAFT_PROFILE=lan)
    fi
    local scheme=http
    if [[ $tls == tls ]]; then
      env+=(TANVRIT_TLS_CERT_FILE=$pki/replica-$((i + 1)).pem
        TANVRIT_TLS_KEY_FILE=$pki/replica-$((i + 1))-key.pem TANVRIT_TLS_CA_FILE=$pki/ca.pem)
      scheme=https
    else
      env+=(TANVRIT_CLUSTER_SECRET=$secret)
    fi
    env "${env[@]}" "$bin" server --data-dir "$dir" --api-addr "127.0.0.1:${ports[$i]}" \
      >"$dir/out.log" 2>"$dir/err.log" &
    pids+=($!)
    addrs+="${addrs:+,}$scheme://127.0.0.1:${ports[$i]}"
  done
  wait_ready "$addrs"
}

if [[ $only == tls ]]; then
  echo "# $(nproc) cores, $(uname -r); ${seconds}s per level after 1s warm-up; $bin"
  echo "== tanvrit, Raft, 3 replicas (LAN profile), TLS off"
  tanvrit_cluster raft3 3
  TANVRIT_ADDR=$addrs TANVRIT_API_KEY=$key $bin bench submit --duration "${seconds}s"
  stop_all
  echo "== tanvrit, Raft, 3 replicas (LAN profile), TLS on (API TLS, replica mTLS)"
  tanvrit_cluster raft3tls 3 raft tls
  TANVRIT_ADDR=$addrs TANVRIT_API_KEY=$key $bin bench submit --duration "${seconds}s"
  stop_all
  exit 0
fi

echo "# $(nproc) cores, $(uname -r); ${seconds}s per level after 1s warm-up; $(etcd --version | head -1)"

echo "== tanvrit, single node (no Raft)"
tanvrit_cluster single 1 single
TANVRIT_ADDR=$addrs TANVRIT_API_KEY=$key $bin bench submit --duration "${seconds}s"
stop_all

echo "== tanvrit, Raft, 1 replica"
tanvrit_cluster raft1 1
TANVRIT_ADDR=$addrs TANVRIT_API_KEY=$key $bin bench submit --duration "${seconds}s"
stop_all

echo "== tanvrit, Raft, 3 replicas (LAN profile), workers spread over the 3 addresses"
tanvrit_cluster raft3 3
TANVRIT_ADDR=$addrs TANVRIT_API_KEY=$key $bin bench submit --duration "${seconds}s"
stop_all

echo "== tanvrit, Raft, 3 replicas (LAN profile), TLS on (API TLS, replica mTLS)"
tanvrit_cluster raft3tls 3 raft tls
TANVRIT_ADDR=$addrs TANVRIT_API_KEY=$key $bin bench submit --duration "${seconds}s"
stop_all

echo "== etcd, 1 member, 256-byte puts"
etcd_cluster etcd1 1
$bin bench etcd-put --endpoints "$endpoints" --duration "${seconds}s" --value-size 256
stop_all

echo "== etcd, 3 members, 256-byte puts, workers spread over the 3 endpoints"
etcd_cluster etcd3 3
$bin bench etcd-put --endpoints "$endpoints" --duration "${seconds}s" --value-size 256
stop_all

echo "== failover: kill -9 of the leader to the first acknowledged write ($kills kills each)"
$bin bench failover --target tanvrit --profile default --kills "$kills" --work-dir "$work"
$bin bench failover --target tanvrit --profile lan --kills "$kills" --work-dir "$work"
$bin bench failover --target etcd --etcd-heartbeat-ms 500 --etcd-election-ms 2500 \
  --kills "$kills" --work-dir "$work"
