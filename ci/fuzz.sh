#!/usr/bin/env bash
# Builds the cargo-fuzz targets (fuzz/, a workspace of its own) and runs each for
# FUZZ_SECONDS (default 30) from fuzz/seeds/<target>; any crash fails the run and
# leaves its input in fuzz/artifacts/<target>/.
#
# Only a stable toolchain is needed: cargo-fuzz passes a few `-Z` flags, which
# RUSTC_BOOTSTRAP=1 lets stable rustc accept, and `--sanitizer none` skips AddressSanitizer
# (it would need a std built for it, i.e. nightly's -Zbuild-std); the targets are safe
# Rust, so what libFuzzer looks for here is panics, failed round trips and hangs.
#
#   ci/fuzz.sh                     # all targets, 30 s each
#   FUZZ_SECONDS=300 ci/fuzz.sh cli_values
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
export RUSTC_BOOTSTRAP=1
seconds=${FUZZ_SECONDS:-30}
# 16 codegen units: the build takes a third of the time, the targets run a little slower.
flags=(--sanitizer none --target-dir target/fuzz --codegen-units 16)

# cargo-fuzz has no --locked; this fails the same way when fuzz/Cargo.lock is stale.
cargo metadata --locked --manifest-path fuzz/Cargo.toml --format-version 1 >/dev/null
cargo fuzz build "${flags[@]}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
for target in "${targets[@]}"; do
  corpus=target/fuzz/corpus/$target
  mkdir -p "$corpus"
  echo "==> fuzz $target for ${seconds}s"
  cargo fuzz run "${flags[@]}" "$target" "$corpus" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    2>&1 | grep -Ev '^#[0-9]+[[:space:]]+(NEW|REDUCE|pulse)' | tail -40
done
