#!/usr/bin/env bash
# The project's test command (the README's second set-up command; .ci/run calls it).
# Runs on a machine with no GPU: unit and integration tests on the CPU backend,
# against PyTorch goldens committed in tests/fixtures (no PyTorch needed here), the
# kernels in the host emulator, and every kernel compiled by NVRTC and assembled by
# ptxas for sm_80/86/89/90 (tests/nvrtc.rs); then `lesionseg eval` against the
# official ISIC scorer, bit for bit (skipped, saying why, without Python >= 3.13 or
# network for its one-time install into .cache/isic-scoring).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --check
else
  echo "rustfmt not installed; skipping the format check"
fi

# NVRTC (libnvrtc.so.13 + libnvrtc-builtins) and ptxas from NVIDIA's wheels, pinned,
# into .cache/nvidia (git-ignored); the library finds them there by itself.
CUDA_WHEELS_VERSION=13.0.88
NVIDIA_DIR=.cache/nvidia
nvidia_ready() {
  [ -f "$NVIDIA_DIR/nvidia/cu13/lib/libnvrtc.so.13" ] && [ -x "$NVIDIA_DIR/nvidia/cu13/bin/ptxas" ] &&
    [ -d "$NVIDIA_DIR/nvidia_cuda_nvrtc-$CUDA_WHEELS_VERSION.dist-info" ] &&
    [ -d "$NVIDIA_DIR/nvidia_cuda_nvcc-$CUDA_WHEELS_VERSION.dist-info" ]
}
if nvidia_ready; then
  echo "== NVRTC + ptxas $CUDA_WHEELS_VERSION already in $NVIDIA_DIR"
else
  echo "== installing NVRTC + ptxas (nvidia-cuda-nvrtc, nvidia-cuda-nvcc $CUDA_WHEELS_VERSION) into $NVIDIA_DIR"
  PY=$(command -v python3 || command -v python || true)
  rm -rf "$NVIDIA_DIR.partial"
  if [ -n "$PY" ] && "$PY" -m pip install --quiet --disable-pip-version-check --no-deps \
      --target "$NVIDIA_DIR.partial" \
      "nvidia-cuda-nvrtc==$CUDA_WHEELS_VERSION" "nvidia-cuda-nvcc==$CUDA_WHEELS_VERSION"; then
    rm -rf "$NVIDIA_DIR" && mv "$NVIDIA_DIR.partial" "$NVIDIA_DIR"
  else
    rm -rf "$NVIDIA_DIR.partial"
  fi
  if ! nvidia_ready; then
    why=$([ -n "$PY" ] && echo "pip failed (no network?)" || echo "no python3 with pip")
    cat >&2 <<EOF

!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
!!  WARNING: could not install NVRTC and ptxas
!!  (pip install --target $NVIDIA_DIR nvidia-cuda-nvrtc==$CUDA_WHEELS_VERSION nvidia-cuda-nvcc==$CUDA_WHEELS_VERSION
!!   $why).
!!  The kernel compile checks (tests/nvrtc.rs: NVRTC + ptxas for sm_80/86/89/90,
!!  register spills, entry points) will be SKIPPED, or FAIL where CI is set.
!!  Fix: install those wheels, or set LESIONSEG_NVRTC=/path/to/libnvrtc.so.13 and
!!  LESIONSEG_PTXAS=/path/to/ptxas (CUDA 13.0).
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!

EOF
  fi
fi

echo "== cargo test (dev profile: our crate at opt-level 1, dependencies at 3)"
NVRTC_REPORT="${CARGO_TARGET_DIR:-target}/tmp/nvrtc-kernels.txt"
rm -f "$NVRTC_REPORT"
status=0
cargo test || status=$?

echo "== lesionseg eval against the official isic-challenge-scoring 5.8.0 (scripts/compare_official_scorer.sh)"
scripts/compare_official_scorer.sh "${CARGO_TARGET_DIR:-target}/debug/lesionseg" || status=$?

echo "== cargo clippy --all-targets -D warnings"
cargo clippy --all-targets --quiet -- -D warnings || status=$?

echo "== kernels: NVRTC + ptxas -v (tests/nvrtc.rs)"
if [ -f "$NVRTC_REPORT" ]; then cat "$NVRTC_REPORT"; else echo "(no report: tests/nvrtc.rs did not run)"; fi
exit "$status"
