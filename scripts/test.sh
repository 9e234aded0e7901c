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

# pip_into DIR PACKAGE==VERSION...: the pinned wheels into DIR, all or nothing (a
# failed install leaves no half-filled DIR behind).
PY=$(command -v python3 || command -v python || true)
pip_into() {
  local dir=$1
  shift
  [ -n "$PY" ] || return 1
  rm -rf "$dir.partial"
  if "$PY" -m pip install --quiet --disable-pip-version-check --no-deps --target "$dir.partial" "$@"; then
    rm -rf "$dir" && mv "$dir.partial" "$dir"
  else
    rm -rf "$dir.partial"
    return 1
  fi
}

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
  pip_into "$NVIDIA_DIR" "nvidia-cuda-nvrtc==$CUDA_WHEELS_VERSION" "nvidia-cuda-nvcc==$CUDA_WHEELS_VERSION" || true
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

# nvdisasm for the SASS instruction mix (tests/sass.rs, profile --predict), into
# .cache/nvdisasm. PyPI has no nvidia-cuda-nvdisasm for 13.0 (the first is 13.2.51):
# the oldest 13.x is pinned; a newer disassembler reads the 13.0 assembler's cubins.
NVDISASM_VERSION=13.2.51
NVDISASM_DIR=.cache/nvdisasm
if [ -x "$NVDISASM_DIR/nvidia/cu13/bin/nvdisasm" ] &&
    [ -d "$NVDISASM_DIR/nvidia_cuda_nvdisasm-$NVDISASM_VERSION.dist-info" ]; then
  echo "== nvdisasm $NVDISASM_VERSION already in $NVDISASM_DIR"
else
  echo "== installing nvdisasm (nvidia-cuda-nvdisasm $NVDISASM_VERSION) into $NVDISASM_DIR"
  if ! pip_into "$NVDISASM_DIR" "nvidia-cuda-nvdisasm==$NVDISASM_VERSION"; then
    cat >&2 <<EOF

!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
!!  WARNING: could not install nvdisasm (pip install --target $NVDISASM_DIR
!!  nvidia-cuda-nvdisasm==$NVDISASM_VERSION). The SASS instruction mix (tests/sass.rs)
!!  will be SKIPPED, or FAIL where CI is set; profile --predict runs without the
!!  issue and FP32 bounds. Fix: install the wheel, or set LESIONSEG_NVDISASM.
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!

EOF
  fi
fi

echo "== cargo test (dev profile: our crate at opt-level 1, dependencies at 3)"
NVRTC_REPORT="${CARGO_TARGET_DIR:-target}/tmp/nvrtc-kernels.txt"
SASS_REPORT="${CARGO_TARGET_DIR:-target}/tmp/sass-mix.txt"
COUNTERS_REPORT="${CARGO_TARGET_DIR:-target}/tmp/kernel-counters.txt"
rm -f "$NVRTC_REPORT" "$SASS_REPORT" "$COUNTERS_REPORT"
status=0
# --no-fail-fast: one failing test file does not hide the others' results (nor the
# reports printed below).
cargo test --no-fail-fast || status=$?

echo "== lesionseg eval against the official isic-challenge-scoring 5.8.0 (scripts/compare_official_scorer.sh)"
scripts/compare_official_scorer.sh "${CARGO_TARGET_DIR:-target}/debug/lesionseg" || status=$?

echo "== cargo clippy --all-targets -D warnings"
cargo clippy --all-targets --quiet -- -D warnings || status=$?

echo "== kernels: NVRTC + ptxas -v (tests/nvrtc.rs)"
if [ -f "$NVRTC_REPORT" ]; then cat "$NVRTC_REPORT"; else echo "(no report: tests/nvrtc.rs did not run)"; fi
echo "== kernels: SASS instruction mix of the main loops (tests/sass.rs)"
if [ -f "$SASS_REPORT" ]; then cat "$SASS_REPORT"; else echo "(no report: tests/sass.rs did not run)"; fi
echo "== kernels: memory-access counters at the model's layer shapes (tests/kernel_counters.rs)"
if [ -f "$COUNTERS_REPORT" ]; then cat "$COUNTERS_REPORT"; else echo "(no report: tests/kernel_counters.rs did not run)"; fi
exit "$status"
