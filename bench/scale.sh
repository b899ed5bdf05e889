#!/usr/bin/env bash
# Growth with history (issue: steady for a year): `tanvrit bench scale` starts a single
# node, then 3 Raft replicas (fresh data directories, retention off, loopback), writes
# --jobs terminal jobs into each (submit, then cancel) from clients that never retry,
# and prints per tenth of the jobs: jobs/s, RSS of each replica, data directory, submit
# p99, each snapshot's build time and the worst write meanwhile; then restart to serving
# and an empty fourth replica's catch-up as a learner, with the issue's targets beside.
# The bench starts and kills its replicas itself (Ctrl-C kills them too).
#
# Usage: bench/scale.sh [tanvrit bench scale flags]
#   e.g. bench/scale.sh                          (the issue's run: 1,000,000 jobs each)
#        bench/scale.sh --jobs 100000 --mode single --json
# Environment: TANVRIT_BIN (default: a release build of this tree).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z ${TANVRIT_BIN:-} ]]; then
  cargo build --release -p tanvrit >/dev/null
  bin=$PWD/target/release/tanvrit
else
  bin=$TANVRIT_BIN
fi
echo "# $(nproc) cores, $(uname -r), $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u +%FT%TZ)" >&2
exec "$bin" bench scale "$@"
