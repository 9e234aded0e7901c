#!/usr/bin/env bash
# The GPU check, on a machine with an NVIDIA GPU and driver but no Rust toolchain:
# runs what scripts/gpu-prebuild.sh put in .gpu/ — `lesionseg info`, the GPU tests
# (tests/gpu.rs in full: executor, testing.cu kernels, the narrow model against the
# CPU and `forward --device cuda` against the PyTorch goldens; the kernel tests
# tests/*_kernels.rs except the emulator-only ones, whose names contain "emu"), and
# the `forward` command on the committed narrow fixtures; then the performance side
# by side (`lesionseg profile --device cuda`, f32 and `--precision bf16`, and
# bench/pytorch_reference.py in fp32/TF32/bf16/compile at 512x512: training step at
# batch 8, inference at batch 1) and the criterion `cuda_` benchmarks — then prints a
# short summary last: card, date, commit, PASS/FAIL/SKIP per step, the criterion
# training-step and inference rows, the ratio table. Full logs and the summary go to
# $OUT when it is set.
#
#   scripts/gpu-check.sh                              # everything above
#   GPU_TEST_FILTER=cuda_matches scripts/gpu-check.sh # only kernel tests matching this
#   GPU_PERF=0     no performance part     GPU_BENCH=0       no criterion benchmarks
#   GPU_BENCH_BF16=1  also the cuda-bf16_ criterion groups
#   GPU_CHECK_BUDGET=480  steps that would start after this many seconds are skipped
#   GPU_CALIBRATE=0  no calibration table (predicted beside measured per layer, bf16;
#                    GPU_CALIBRATE_SIZE=256 GPU_CALIBRATE_BATCH=2, GPU_CALIBRATE_GPU=h100
#                    when the card's name does not say which model to use)
#   GPU_CHECK_DRIVER_ONLY=1   hide every NVRTC: the check on the driver alone
#
# The GPU needs only the NVIDIA driver: the kernels are embedded in the binaries
# (cubins for sm_80/86/87/89/90, PTX the driver compiles for other GPUs); nothing
# here looks for or exports an NVRTC. An NVRTC the binaries find by themselves is
# used only for kernels they do not embed (tests/gpu.rs's own), never one newer
# than the driver. GPU_CHECK_DRIVER_ONLY=1 hides every NVRTC (LESIONSEG_NVRTC set to
# an empty folder), as on a host that has none. `lesionseg info` (the first step)
# says which path each kernel file took. Exit status: 0 when every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [ ! -x .gpu/lesionseg ]; then
  echo "no .gpu/lesionseg: run scripts/gpu-prebuild.sh on a machine with Rust first" >&2
  exit 2
fi
build_info() { sed -n "s/^$1=//p" .gpu/BUILD_INFO 2>/dev/null; }

if [ "${GPU_CHECK_DRIVER_ONLY:-0}" = 1 ]; then
  no_nvrtc=$(mktemp -d)
  export LESIONSEG_NVRTC="$no_nvrtc"  # searched alone, and empty: no NVRTC at all
  echo "NVRTC: hidden (GPU_CHECK_DRIVER_ONLY=1): the driver and the embedded kernels only"
else
  echo "NVRTC: not needed; lesionseg info below says whether one was found and whether it was used"
fi

export LESIONSEG_BIN="$ROOT/.gpu/lesionseg"  # the binary tests/gpu.rs runs
export LESIONSEG_ROOT="$ROOT"                # where tests/gpu.rs finds tests/fixtures
export LESIONSEG_REQUIRE_GPU=1               # no GPU is a failure here, not a skip
export LESIONSEG_SYNC=1                      # a faulting kernel is named at its launch
[ -n "${OUT:-}" ] && mkdir -p "$OUT"           # where the logs and the summary go
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
# A time budget (seconds, default 480): a step that would start after it is recorded
# as skipped, so the summary always prints even when the steps run long (the device
# runner's limit would otherwise kill the script before it).
BUDGET=${GPU_CHECK_BUDGET:-480}
step() {
  local name=$1
  shift
  if [ "$SECONDS" -ge "$BUDGET" ]; then
    results+=("SKIP  $name (the ${BUDGET}s budget was spent; GPU_CHECK_BUDGET raises it)")
    return 0
  fi
  echo
  echo "======== $name"
  local start=$SECONDS
  "$@"
  local rc=$?
  local took=$((SECONDS - start))
  if [ $rc -eq 0 ]; then results+=("PASS  $name (${took}s)"); else results+=("FAIL  $name (exit $rc, ${took}s)"); fi
  return 0
}

# Calibration of the performance model (README, "Predicting a GPU without one"):
# the emulator's prediction for this card (made on the CPU, in the background while
# the GPU steps run) beside `profile --device cuda` per layer, bf16, batch
# $CAL_BATCH at ${CAL_SIZE}x${CAL_SIZE}. GPU_CALIBRATE=0 skips it; GPU_CALIBRATE_GPU
# names the model (h100, a100, l4, orin) when the card's name does not.
CAL_SIZE=${GPU_CALIBRATE_SIZE:-256}
CAL_BATCH=${GPU_CALIBRATE_BATCH:-2}
cal_gpu=${GPU_CALIBRATE_GPU:-}
if [ -z "$cal_gpu" ]; then
  case "$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)" in
    *H100*) cal_gpu=h100 ;; *A100*) cal_gpu=a100 ;; *L40*) cal_gpu= ;; *L4*) cal_gpu=l4 ;; *Orin*) cal_gpu=orin ;;
  esac
fi
cal_pid=
if [ "${GPU_CALIBRATE:-1}" = 1 ] && [ -n "$cal_gpu" ]; then
  .gpu/lesionseg profile --device emu --predict "$cal_gpu" --precision bf16 --size "$CAL_SIZE" \
    --batch-size "$CAL_BATCH" --json >"$TMP/predicted.json" 2>"$TMP/predicted.err" &
  cal_pid=$!
fi

step "nvidia-smi" nvidia-smi
step "lesionseg info" bash -c "set -o pipefail; .gpu/lesionseg info | tee $TMP/info.txt"
# How the kernel files reached the GPU (embedded cubin, embedded PTX, NVRTC), for the summary.
load_paths=$(sed -n 's/^  \([a-z0-9_]*\.cu\): loaded from \(embedded cubin\|embedded PTX\|NVRTC\).*/\2/p' "$TMP/info.txt" 2>/dev/null |
  sort | uniq -c | awk '{c=$1; $1=""; printf "%s%d from%s", (n++ ? ", " : ""), c, $0}')
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
# Data parallel over NCCL: one epoch as rank 0 of 1 under the launcher's environment
# (ncclGetUniqueId, ncclCommInitRank, one ncclAllReduce of the gradients per step)
# must log what the plain single-GPU run logs (metrics.csv without its seconds
# column). A single card cannot show scaling. Skipped, saying why, when `lesionseg
# info` finds no NCCL (nvidia-nccl-cu13's libnccl.so.2; LESIONSEG_NCCL points at one).
nccl_check() {
  local d=$TMP/nccl
  .gpu/lesionseg synth --out "$d/data" --count 20 --size 64 >/dev/null || return 1
  local args=(train --device cuda --data "$d/data" --size 32 --width 0.0625 --epochs 1 --batch-size 4 --seed 3)
  .gpu/lesionseg "${args[@]}" --out "$d/plain" || return 1
  RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29517 \
    .gpu/lesionseg "${args[@]}" --out "$d/nccl" || return 1
  diff <(sed 's/,[^,]*$//' "$d/plain/metrics.csv") <(sed 's/,[^,]*$//' "$d/nccl/metrics.csv")
}
if grep -q '^NCCL: [0-9]' "$TMP/info.txt" 2>/dev/null; then
  step "NCCL: one epoch as rank 0 of 1 equals the single-GPU run" nccl_check
else
  results+=("SKIP  NCCL training ($(sed -n 's/^NCCL: //p' "$TMP/info.txt" 2>/dev/null | head -c 160))")
fi
for case in narrow_n2_64x64 narrow_n1_64x96; do
  step "forward --device cuda on $case" .gpu/lesionseg forward --device cuda \
    --weights tests/fixtures/narrow_weights.safetensors --input "tests/fixtures/$case.safetensors" \
    --output "$TMP/$case.out.safetensors"
done
# The bf16 engine on the fixture whose global maxima lead by >= 3e-2 (tests/bf16.rs
# judges the emulator's result against PyTorch's bf16 yardstick; this shows the card
# runs the same path).
step "forward --device cuda --precision bf16 on narrow_n1_64x64_widemax" .gpu/lesionseg forward \
  --device cuda --precision bf16 --weights tests/fixtures/narrow_weights.safetensors \
  --input tests/fixtures/narrow_n1_64x64_widemax.safetensors --output "$TMP/widemax-bf16.out.safetensors"

# Performance side by side on this card: lesionseg profile and the PyTorch reference
# (fp32 TF32 off, TF32, bf16 autocast + channels_last, torch.compile), training step
# at batch 8 and inference at batch 1, 512x512, the paper's model. The ratios are
# printed at the end. GPU_PERF=0 skips this part.
perf_rows=()
if [ "${GPU_PERF:-1}" = 1 ]; then
  export LESIONSEG_SYNC=0  # timing: no wait after each launch

  for shape in "8 train" "1 infer"; do
    set -- $shape
    bs=$1
    step "lesionseg profile --device cuda --batch-size $bs" bash -c \
      "timeout 240 .gpu/lesionseg profile --device cuda --batch-size $bs --size 512 --steps 5 --json > $TMP/ls-$bs.json"
    step "pytorch_reference --batch-size $bs" bash -c \
      "timeout 300 python3 bench/pytorch_reference.py --device cuda --batch-size $bs --size 512 --steps 5 --no-layers \
       --modes fp32,tf32,bf16,compile --json > $TMP/pt-$bs.json"
  done
  # --precision bf16: every convolution and deconvolution GEMM on tensor cores.
  for bs in 8 1; do
    step "lesionseg profile --device cuda --precision bf16 --batch-size $bs" bash -c \
      "timeout 120 .gpu/lesionseg profile --device cuda --precision bf16 --batch-size $bs --size 512 --steps 5 \
       --no-layers --json > $TMP/ls-$bs-bf16.json"
  done
  perf_table=$(python3 - "$TMP" <<'PY' 2>&1
import json, sys, os
tmp = sys.argv[1]
def load(path):
    try:
        text = open(path).read()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    if not out:
        try:
            d = json.loads(text)
            out = d if isinstance(d, list) else [d]
        except ValueError:
            pass
    return out
print(f"{'batch 8 training step / batch 1 inference, 512x512':<52} {'ms':>10} {'ratio':>8}")
nan = float("nan")
for bs, key, what in ((8, "step_median_ms", "training step"), (1, "forward_median_ms", "inference")):
    theirs = load(os.path.join(tmp, f"pt-{bs}.json"))
    # lesionseg f32 against every PyTorch mode, then bf16 against the tensor-core modes.
    for prec, suffix, modes in (("fp32", "", None), ("bf16", "-bf16", ("bf16", "compile"))):
        ours = load(os.path.join(tmp, f"ls-{bs}{suffix}.json"))
        base = ours[0][key] if ours else None
        print(f"lesionseg {prec} {what} (batch {bs}){'':<20} {base or nan:>10.2f} {'':>8}")
        for r in theirs:
            if modes and r.get("mode") not in modes:
                continue
            t = r.get(key)
            ratio = base / t if base and t else nan
            print(f"  PyTorch {r.get('mode', '?'):<10} {what} (batch {bs}){'':<8} {t or nan:>10.2f} {ratio:>7.2f}x")
print("ratio = lesionseg time / PyTorch time (> 1: lesionseg slower)")
PY
)
  # Criterion on this card (CUDA-event timing): every op at 512x512 batch 1 and 8,
  # the training step and inference; short measurements to fit the run. The full
  # output goes to $OUT/bench-cuda.txt, every op's median to $OUT/bench-cuda-table.txt,
  # the model's rows to the summary; GPU_BENCH=0 skips it.
  if [ "${GPU_BENCH:-1}" = 1 ] && [ -x .gpu/bench-ops ]; then
    bench_log="${OUT:-$TMP}/bench-cuda.txt"
    # GPU_BENCH_BF16=1 adds the cuda-bf16_ groups (about a minute more).
    filter=cuda_
    [ "${GPU_BENCH_BF16:-0}" = 1 ] && filter='cuda(_|-bf16_)'
    step "criterion $filter benchmarks" bash -c "CRITERION_HOME=$TMP/criterion timeout 300 .gpu/bench-ops \
      --bench '$filter' --warm-up-time 0.1 --measurement-time 0.3 --noplot > $bench_log 2>&1"
    if [ -f "$bench_log" ]; then
      python3 bench/criterion_table.py "$bench_log" >"${OUT:-$TMP}/bench-cuda-table.txt" 2>&1
      bench_table=$(python3 bench/criterion_table.py "$bench_log" --only _train_step,_inference 2>&1)
    fi
  fi
fi
if [ -n "$cal_pid" ]; then
  step "lesionseg profile --device cuda --precision bf16 (calibration, batch $CAL_BATCH, $CAL_SIZE)" bash -c \
    "LESIONSEG_SYNC=0 timeout 120 .gpu/lesionseg profile --device cuda --precision bf16 --size $CAL_SIZE \
     --batch-size $CAL_BATCH --steps 5 --json > $TMP/measured.json"
  step "profile --device emu --predict $cal_gpu (started in the background)" wait "$cal_pid"
  calibration=$(python3 - "$TMP" "$cal_gpu" <<'PY' 2>&1
import json, sys, os
tmp, gpu = sys.argv[1], sys.argv[2]
try:
    pred = json.load(open(os.path.join(tmp, "predicted.json")))
    meas = json.load(open(os.path.join(tmp, "measured.json")))
except (OSError, ValueError) as e:
    print(f"calibration: no table ({e}; see predicted.err / the profile step)")
    sys.exit(0)
m = {l["name"]: l for l in meas.get("layers", [])}
print(f"calibration on {gpu}: predicted / measured per layer (bf16, batch {pred['batch']}, {pred['height']}x{pred['width']})")
print(f"{'layer':<13} {'fwd pred':>9} {'fwd meas':>9} {'ratio':>6} {'bound':>6} | {'bwd pred':>9} {'bwd meas':>9} {'ratio':>6} {'bound':>6}")
for l in pred["layers"]:
    row = [f"{l['name']:<13}"]
    for p in ("forward", "backward"):
        pm = l[p]["ms"] or 0.0
        mm = m.get(l["name"], {}).get(f"{p}_ms") or 0.0
        ratio = f"{pm / mm:6.2f}" if pm and mm else f"{'-':>6}"
        row.append(f"{pm:9.4f} {mm:9.4f} {ratio} {l[p]['bound'] or '-':>6}")
    print(" | ".join([" ".join(row[:1]) + " " + row[1], row[2]]))
ps, ms = pred["step_ms"], meas.get("step_median_ms")
print(f"training step: predicted {ps:.3f} ms, measured {ms or float('nan'):.3f} ms, ratio {ps / ms if ms else float('nan'):.2f}")
print("ratio = predicted / measured; constants change only from these tables, each change recorded in bench/RESULTS.md")
PY
)
  [ -n "${OUT:-}" ] && echo "$calibration" >"$OUT/calibration.txt"
elif [ "${GPU_CALIBRATE:-1}" = 1 ]; then
  results+=("SKIP  calibration (no model for this card: set GPU_CALIBRATE_GPU=h100|a100|l4|orin)")
fi
rm -rf "$TMP" "$LESIONSEG_CACHE_DIR" "${no_nvrtc:-}"

card=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
failed=0 skipped=0
for r in "${results[@]}"; do
  [[ $r == FAIL* ]] && failed=$((failed + 1))
  [[ $r == SKIP* ]] && skipped=$((skipped + 1))
done
skip_note=""
[ $skipped -gt 0 ] && skip_note=", $skipped skipped for time"
summary() {
  echo
  echo "================ GPU check summary (${SECONDS}s)"
  echo "card:    ${card:-unknown (nvidia-smi failed)}"
  echo "date:    $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit:  $(build_info commit) ($(build_info profile) build of $(build_info built))"
  echo "kernels: ${load_paths:-not loaded (see lesionseg info)}${LESIONSEG_NVRTC:+ (NVRTC hidden)}"
  printf '%s\n' "${results[@]}"
  if [ -n "${bench_table:-}" ]; then echo; echo "$bench_table"; fi
  if [ -n "${perf_table:-}" ]; then echo; echo "$perf_table"; fi
  if [ -n "${calibration:-}" ]; then echo; echo "$calibration"; fi
  if [ $failed -eq 0 ]; then echo "RESULT:  PASS$skip_note"; else echo "RESULT:  FAIL ($failed of ${#results[@]} steps$skip_note)"; fi
}
# The summary also goes to $OUT (the device tool brings that folder back), ready to be
# appended to bench/RESULTS.md with the card, date and commit it names.
summary | tee "${OUT:-${TMPDIR:-/tmp}}/gpu-check-summary.txt"
[ $failed -eq 0 ]
