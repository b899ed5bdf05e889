# Shared by the bench scripts (sourced, not run): the processes a run started, free
# loopback ports, and an etcd cluster. The caller sets $work (a scratch directory).

pids=()

# Kills every process the run started and waits for them.
stop_all() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}

# free_ports N: N free loopback ports, reserved together, then released.
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# Installs Debian's etcd 3.4 (etcd-server, etcd-client) when it is missing.
ensure_etcd() {
  if ! command -v etcd >/dev/null; then
    echo "== installing etcd (Debian etcd-server, etcd-client)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >/dev/null
  fi
}

# etcd_cluster NAME MEMBERS [ETCD FLAGS...]: starts the members, sets $endpoints, waits
# until they are healthy.
etcd_cluster() {
  local name=$1 n=$2 i
  shift 2
  read -r -a ports <<<"$(free_ports $((2 * n)))"
  local initial=""
  for ((i = 0; i < n; i++)); do
    initial+="${initial:+,}e$((i + 1))=http://127.0.0.1:${ports[$((n + i))]}"
  done
  endpoints=""
  for ((i = 0; i < n; i++)); do
    local client=http://127.0.0.1:${ports[$i]} peer=http://127.0.0.1:${ports[$((n + i))]}
    etcd --name "e$((i + 1))" --data-dir "$work/$name/e$((i + 1))" \
      --listen-client-urls "$client" --advertise-client-urls "$client" \
      --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
      --initial-cluster "$initial" --initial-cluster-state new \
      --initial-cluster-token "$name" --log-level error "$@" \
      >"$work/$name-e$((i + 1)).log" 2>&1 &
    pids+=($!)
    endpoints+="${endpoints:+,}$client"
  done
  for _ in $(seq 300); do
    ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint health >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "etcd not healthy: $endpoints" >&2
  return 1
}
