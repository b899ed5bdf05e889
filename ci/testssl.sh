#!/usr/bin/env bash
# Debian's testssl.sh against the API port of `tanvrit dev` (TLS by default, with its
# throwaway CA): protocols, cipher categories and the vulnerabilities testssl checks.
# Fails when SSLv2/SSLv3/TLS 1.0/TLS 1.1 is offered or when any finding is rated
# MEDIUM, HIGH or CRITICAL. Leaves the findings in target/testssl/ and prints a
# summary (recorded in docs/tls-scan.md).
#
#   ci/testssl.sh [path/to/tanvrit]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/tanvrit}
command -v testssl >/dev/null || { echo "testssl (Debian package testssl.sh) is not installed" >&2; exit 1; }
out=target/testssl
rm -rf "$out" && mkdir -p "$out"
work=$(mktemp -d)
server=
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

env -u TANVRIT_ADDR -u TANVRIT_API_KEY RUST_LOG=warn \
  "$bin" dev --data-dir "$work/data" --api-addr 127.0.0.1:0 >"$work/out" 2>"$work/err" &
server=$!
url=
for _ in $(seq 600); do
  url=$(sed -n 's/^listening on //p' "$work/out")
  [ -n "$url" ] && break
  kill -0 "$server" 2>/dev/null || { cat "$work/err" >&2; echo "tanvrit dev exited" >&2; exit 1; }
  sleep 0.1
done
case "$url" in https://*) ;; *) echo "tanvrit dev is not serving TLS: '$url'" >&2; exit 1 ;; esac
echo "testssl against $url"
# -p protocols, -s cipher categories, -U vulnerabilities; --fast and the timeouts keep
# it to a minute or two (the full default run takes many).
status=0
timeout 600 testssl --quiet --color 0 --warnings off --fast --ip one \
  --openssl-timeout 5 -p -s -U \
  --jsonfile "$out/testssl.json" --logfile "$out/testssl.log" \
  "${url#https://}" >/dev/null || status=$?
# testssl exits with the number of findings at or above its threshold; judged below.
[ -s "$out/testssl.json" ] || { echo "testssl wrote no findings (exit $status)" >&2; exit 1; }
python3 - "$out/testssl.json" <<'PY'
import json, sys
findings = json.load(open(sys.argv[1]))
old = {"SSLv2", "SSLv3", "TLS1", "TLS1_1"}
bad = []
for f in findings:
    fid, sev, text = f.get("id", ""), f.get("severity", ""), f.get("finding", "")
    if fid in old and "not offered" not in text:
        bad.append(f"{fid}: {text}")
    elif sev in ("MEDIUM", "HIGH", "CRITICAL"):
        bad.append(f"{fid} ({sev}): {text}")
protocols = [f"{f['id']}: {f['finding']}" for f in findings
             if f.get("id") in ("SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3")]
vulns = [f for f in findings if f.get("id") in (
    "heartbleed", "CCS", "ticketbleed", "ROBOT", "secure_renego", "secure_client_renego",
    "CRIME_TLS", "BREACH", "POODLE_SSL", "fallback_SCSV", "SWEET32", "FREAK", "DROWN",
    "LOGJAM", "BEAST", "LUCKY13", "RC4")]
print("protocols:")
for p in protocols:
    print("  " + p)
print("cipher categories:")
for f in findings:
    if f.get("id", "").startswith("cipherlist_"):
        print(f"  {f['id']}: {f['finding']} ({f.get('severity')})")
print("vulnerabilities:")
for f in vulns:
    print(f"  {f['id']}: {f['finding']} ({f.get('severity')})")
if bad:
    print("FAILED:", *bad, sep="\n  ")
    sys.exit(1)
print("no old protocol, no weak cipher, no vulnerability found")
PY
