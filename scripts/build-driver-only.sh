#!/usr/bin/env bash
# One command for a binary that needs only the NVIDIA driver on a GPU machine:
# installs the pinned NVRTC 13.0 wheel into .cache/nvidia if it is not there (as
# scripts/test.sh does), builds target/release/lesionseg (and liblesionseg.so) with
# every kernel embedded (LESIONSEG_EMBED=require: the build fails instead of
# warning), and shows what the binary embeds with every NVRTC hidden from it.
#
#   scripts/build-driver-only.sh
#   cp target/release/lesionseg /somewhere/else && /somewhere/else/lesionseg info
set -euo pipefail
cd "$(dirname "$0")/.."

CUDA_WHEELS_VERSION=13.0.88
NVIDIA_DIR=.cache/nvidia
if [ ! -f "$NVIDIA_DIR/nvidia/cu13/lib/libnvrtc.so.13" ] ||
  [ ! -d "$NVIDIA_DIR/nvidia_cuda_nvrtc-$CUDA_WHEELS_VERSION.dist-info" ]; then
  echo "== installing NVRTC $CUDA_WHEELS_VERSION (nvidia-cuda-nvrtc) into $NVIDIA_DIR"
  PY=$(command -v python3 || command -v python) || { echo "need python3 with pip, or LESIONSEG_NVRTC=/path/to/libnvrtc.so.13 (13.0.x)" >&2; exit 1; }
  rm -rf "$NVIDIA_DIR.partial"
  "$PY" -m pip install --quiet --disable-pip-version-check --no-deps --target "$NVIDIA_DIR.partial" \
    "nvidia-cuda-nvrtc==$CUDA_WHEELS_VERSION"
  # Keep a ptxas the test script may have installed alongside.
  mkdir -p "$NVIDIA_DIR" && cp -a "$NVIDIA_DIR.partial/." "$NVIDIA_DIR/" && rm -rf "$NVIDIA_DIR.partial"
fi

echo "== cargo build --release (kernels embedded)"
LESIONSEG_EMBED=require cargo build --release

echo "== target/release/lesionseg info, with no NVRTC to be found"
no_nvrtc=$(mktemp -d)
LESIONSEG_NVRTC=$no_nvrtc target/release/lesionseg info | sed -n '/^embedded kernels/,/^NVRTC/p'
rmdir "$no_nvrtc"
echo "target/release/lesionseg and target/release/liblesionseg.so need only the NVIDIA driver on a GPU"
