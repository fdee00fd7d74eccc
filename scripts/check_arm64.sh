#!/usr/bin/env bash
# Run desta-edge on aarch64 (arm64, the CPU of a Jetson) without one: an arm64 Debian 12 root
# filesystem under QEMU's user-mode emulation, on an x86_64 Debian/Ubuntu host. It checks that the
# README's setup installs there (every wheel has an aarch64 build), that the embedded default
# answers the example question, and that the native pieces work on arm64 (webrtcvad, Silero in
# NumPy, WebRTC's AEC3 from livekit, Speex's canceller from Debian's libspeexdsp1).
# It measures nothing about speed: emulation runs many times slower than the hardware.
#
#   sudo bash scripts/check_arm64.sh [ROOTFS]     (default ROOTFS: /tmp/desta-edge-arm64)
#
# Needs root (debootstrap, chroot, binfmt_misc), the Debian mirror and PyPI. DESTA_EDGE_CACHE, if
# set, is copied in as the model cache, so the backbones are not converted again under emulation
# (the converted files do not depend on the CPU).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
root=${1:-/tmp/desta-edge-arm64}
[ "$(id -u)" = 0 ] || { echo "run as root: debootstrap and chroot need it" >&2; exit 1; }
[ "$(uname -m)" = x86_64 ] || echo "note: this host is $(uname -m), not x86_64" >&2

DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static binfmt-support debootstrap >/dev/null
mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || { echo "qemu-aarch64 is not registered with binfmt_misc" >&2; exit 1; }

if [ ! -x "$root/usr/bin/python3" ]; then
  echo "building an arm64 Debian 12 in $root (about 7 minutes)"
  debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$root" http://deb.debian.org/debian >/dev/null
fi
cp /etc/resolv.conf "$root/etc/resolv.conf"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"  # a proxy's CA, if any
rm -rf "$root/root/desta-edge" "$root/root/cache"
git clone -q "$repo" "$root/root/desta-edge"
mkdir -p "$root/root/cache"
if [ -n "${DESTA_EDGE_CACHE:-}" ] && [ -d "$DESTA_EDGE_CACHE" ]; then
  cp -r "$DESTA_EDGE_CACHE"/. "$root/root/cache/"
fi

# PyTorch's cpuinfo needs the CPU lists of sysfs ("Failed to initialize cpuinfo!" at the first
# fp16 conversion without them), but the host's own sysfs describes x86 CPUs and makes
# `import torch` crash under emulation: so /proc and /dev from the host, and two files for /sys.
trap 'for fs in dev proc; do umount -l "$root/$fs" 2>/dev/null || true; done' EXIT
for fs in proc dev; do mountpoint -q "$root/$fs" || mount --bind "/$fs" "$root/$fs"; done
mkdir -p "$root/sys/devices/system/cpu"
for list in possible present; do echo "0-$(($(nproc) - 1))" > "$root/sys/devices/system/cpu/$list"; done

# a clean environment: the host's pip settings (local wheel folders, indexes) do not apply inside
chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
  DESTA_EDGE_CACHE=/root/cache /bin/bash -c '
set -euo pipefail
cd /root/desta-edge
echo "machine: $(uname -m), $(python3 --version)"
bash scripts/setup.sh
time .venv/bin/desta-edge ask examples/what_is_the_capital_of_france.wav --json | tail -n 1
# only what the tests of the native pieces need: `setup.sh --test` would install far more, emulated
apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng libspeexdsp1 >/dev/null
.venv/bin/python -m pip install -q pytest livekit
.venv/bin/python -m pytest -q -rs -p no:cacheprovider tests/test_vad.py tests/test_silero.py tests/test_echo.py
'
