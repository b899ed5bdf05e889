#!/usr/bin/env bash
# Builds the `tanvrit:dev` image from this repository alone: a static glibc binary
# (profile `image`) and busybox-static's applets (for `sh` in health checks and
# jobs' shell commands) on `scratch`. No registry is contacted.
#
#   deploy/image/build.sh [TAG]        # default tanvrit:dev
set -euo pipefail
cd "$(dirname "$0")/../.."
tag=${1:-tanvrit:dev}
target=x86_64-unknown-linux-gnu
busybox=${BUSYBOX:-/bin/busybox}

# A dynamic busybox would not run on `scratch`.
linkage=$(ldd "$busybox" 2>&1 || true)
if ! [ -x "$busybox" ] || ! grep -Eq 'not a dynamic executable|statically linked' <<<"$linkage"; then
  echo "build.sh: $busybox is missing or not static (apt-get install busybox-static)" >&2
  exit 1
fi

# `--target` keeps crt-static away from build scripts and proc-macros.
RUSTFLAGS='-C target-feature=+crt-static' \
  cargo build --locked --profile image --target "$target" -p tanvrit
bin=target/$target/image/tanvrit

root=target/image-root
rm -rf "$root"
mkdir -p "$root/bin" "$root/tmp" "$root/usr/local/bin" "$root/data" "$root/etc"
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
cp "$bin" "$root/usr/local/bin/tanvrit"
# Jobs run as root in the container; a passwd entry lets `id`/`whoami` answer.
printf 'root:x:0:0:root:/data:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"

# The classic builder: BuildKit would want a frontend image (and buildx).
DOCKER_BUILDKIT=0 docker build --quiet -t "$tag" -f deploy/image/Dockerfile "$root" >/dev/null
echo "built $tag ($(du -sh "$root" | cut -f1) root, binary $(du -h "$bin" | cut -f1))"
