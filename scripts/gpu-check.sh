#!/usr/bin/env bash
# The GPU check, on a machine with an NVIDIA GPU and driver but no Rust toolchain:
# runs what scripts/gpu-prebuild.sh put in .gpu/ — `lesionseg info`, the GPU tests
# (tests/gpu.rs in full: executor, testing.cu kernels, the narrow model against the
# CPU and `forward --device cuda` against the PyTorch goldens; the kernel tests
# tests/*_kernels.rs except the emulator-only ones, whose names contain "emu"), and
# the `forward` command on the committed narrow fixtures — then prints a short
# summary last.
#
#   scripts/gpu-check.sh                              # everything above
#   GPU_TEST_FILTER=cuda_matches scripts/gpu-check.sh # only kernel tests matching this
#
# NVRTC is looked for in LESIONSEG_NVRTC, CUDA_HOME/CUDA_PATH, /usr/local/cuda*,
# Python nvidia wheels and the linker path (by the binary itself; found here first
# only to print it). Exit status: 0 when every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [ ! -x .gpu/lesionseg ]; then
  echo "no .gpu/lesionseg: run scripts/gpu-prebuild.sh on a machine with Rust first" >&2
  exit 2
fi
build_info() { sed -n "s/^$1=//p" .gpu/BUILD_INFO 2>/dev/null; }

# Library lookup, for the record (the binary searches the same places).
if [ -z "${LESIONSEG_NVRTC:-}" ]; then
  for d in "${CUDA_HOME:-/nonexistent}"/lib64 "${CUDA_PATH:-/nonexistent}"/lib64 /usr/local/cuda/lib64 \
    /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13*/lib64 \
    $(python3 -c 'import site; print(" ".join(p + "/nvidia/cu13/lib" for p in site.getsitepackages()))' 2>/dev/null); do
    if [ -f "$d/libnvrtc.so.13" ]; then
      export LESIONSEG_NVRTC="$d/libnvrtc.so.13"
      break
    fi
  done
fi
echo "NVRTC: ${LESIONSEG_NVRTC:-not found in the usual places; leaving the search to lesionseg}"

export LESIONSEG_BIN="$ROOT/.gpu/lesionseg"  # the binary tests/gpu.rs runs
export LESIONSEG_ROOT="$ROOT"                # where tests/gpu.rs finds tests/fixtures
export LESIONSEG_REQUIRE_GPU=1               # no GPU is a failure here, not a skip
export LESIONSEG_SYNC=1                      # a faulting kernel is named at its launch
LESIONSEG_CACHE_DIR=$(mktemp -d)             # compile every kernel afresh
export LESIONSEG_CACHE_DIR
TMP=$(mktemp -d)

# Tests of other files find fixtures through the source path compiled into them.
built_root=$(build_info root)
if [ -n "$built_root" ] && [ "$built_root" != "$ROOT" ] && [ ! -e "$built_root" ]; then
  if mkdir -p "$(dirname "$built_root")" 2>/dev/null && ln -s "$ROOT" "$built_root" 2>/dev/null; then
    echo "linked $built_root -> $ROOT (the source path compiled into the tests)"
  else
    echo "note: cannot link $built_root -> $ROOT; tests reading fixtures by that path will fail"
  fi
fi

results=()
step() {
  local name=$1
  shift
  echo
  echo "======== $name"
  local start=$SECONDS
  "$@"
  local rc=$?
  local took=$((SECONDS - start))
  if [ $rc -eq 0 ]; then results+=("PASS  $name (${took}s)"); else results+=("FAIL  $name (exit $rc, ${took}s)"); fi
  return 0
}

step "nvidia-smi" nvidia-smi
step "lesionseg info" .gpu/lesionseg info
if [ -x .gpu/tests/gpu ]; then
  step "tests/gpu.rs" timeout 300 .gpu/tests/gpu --test-threads=1 --nocapture
else
  results+=("FAIL  tests/gpu.rs (not built: rerun scripts/gpu-prebuild.sh)")
fi
if [ -n "${GPU_TEST_FILTER:-}" ]; then select=("$GPU_TEST_FILTER"); else select=(--skip emu); fi
for t in .gpu/tests/*; do
  name=$(basename "$t")
  [ "$name" = gpu ] && continue
  step "tests/$name.rs (${select[*]})" timeout 300 "$t" "${select[@]}" --test-threads=1
done
for case in narrow_n2_64x64 narrow_n1_64x96; do
  step "forward --device cuda on $case" .gpu/lesionseg forward --device cuda \
    --weights tests/fixtures/narrow_weights.safetensors --input "tests/fixtures/$case.safetensors" \
    --output "$TMP/$case.out.safetensors"
done
rm -rf "$TMP" "$LESIONSEG_CACHE_DIR"

card=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
failed=0
for r in "${results[@]}"; do [[ $r == FAIL* ]] && failed=$((failed + 1)); done
echo
echo "================ GPU check summary"
echo "card:    ${card:-unknown (nvidia-smi failed)}"
echo "date:    $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "commit:  $(build_info commit) ($(build_info profile) build of $(build_info built))"
printf '%s\n' "${results[@]}"
if [ $failed -eq 0 ]; then echo "RESULT:  PASS"; else echo "RESULT:  FAIL ($failed of ${#results[@]} steps)"; fi
[ $failed -eq 0 ]
