#!/usr/bin/env bash
# lesionseg's CPU backend against PyTorch on the same CPU: 256x256 inference
# (batch 1) and a 256x256 training step (batch 1, forward + loss + backward + Adam),
# the paper's model (width 1), random weights and data, the same thread count.
#
#   scripts/cpu-vs-pytorch.sh            # ~2-3 minutes on 2 cores
#   ROUNDS=5 STEPS=5 THREADS=2 scripts/cpu-vs-pytorch.sh
#
# Noise: timings on small shared machines swing 2-4x from minute to minute, so
# the two engines are interleaved A/B (lesionseg, PyTorch, lesionseg, PyTorch, …,
# ROUNDS pairs); each run reports the median of STEPS timed steps (after one
# warm-up) and the final figure is the median over rounds. The ratios
# (lesionseg / PyTorch, > 1 means lesionseg is slower) come last.
#
# lesionseg runs through `lesionseg profile`. PyTorch runs
# bench/pytorch_reference.py (system python3 with torch), fp32 NCHW (its default
# eager path; add MODES=fp32,fp32-cl for channels_last too, reported separately).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
STEPS=${STEPS:-3}
THREADS=${THREADS:-2}
SIZE=${SIZE:-256}
MODES=${MODES:-fp32}
PY=${PYTHON:-python3}
export RAYON_NUM_THREADS=$THREADS
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "== building lesionseg (release)"
cargo build --release --quiet --bin lesionseg
rust=("${CARGO_TARGET_DIR:-target}/release/lesionseg" profile --device cpu)
echo "   lesionseg via: ${rust[*]}"

echo "== machine"
model=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
echo "   date $(date -u +%Y-%m-%dT%H:%MZ), cpu: $model, $(nproc) cores, $THREADS threads"
echo "   commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo ' (+ uncommitted changes in src/)')"
echo "   $($PY -c 'import torch; print("torch", torch.__version__, "MKL" if torch.backends.mkl.is_available() else "", "oneDNN" if torch.backends.mkldnn.is_available() else "")')"

for r in $(seq 1 "$ROUNDS"); do
  echo "== round $r/$ROUNDS (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  "${rust[@]}" --size "$SIZE" --batch-size 1 --width 1 --warmup 1 --steps "$STEPS" --no-layers --json >"$out/rust-$r.json"
  $PY bench/pytorch_reference.py --device cpu --size "$SIZE" --batch-size 1 --width 1 --warmup 1 --steps "$STEPS" \
    --threads "$THREADS" --modes "$MODES" --no-layers --json >"$out/torch-$r.json"
  $PY - "$out" "$r" <<'EOF'
import json, sys
out, r = sys.argv[1], sys.argv[2]
rust = json.load(open(f"{out}/rust-{r}.json"))
torch = json.load(open(f"{out}/torch-{r}.json"))
for x in [rust] + (torch if isinstance(torch, list) else [torch]):
    name = x["engine"] + ("" if x["engine"] == "lesionseg" else f" {x['mode']}")
    print(f"   {name:<18} inference {x['forward_median_ms']:8.1f} ms   training step {x['step_median_ms']:8.1f} ms")
EOF
done

echo "== result (median over $ROUNDS interleaved rounds of the per-run medians of $STEPS steps)"
$PY - "$out" "$ROUNDS" "$SIZE" <<'EOF'
import json, statistics, sys
out, rounds, size = sys.argv[1], int(sys.argv[2]), sys.argv[3]
runs = {}
for r in range(1, rounds + 1):
    rust = json.load(open(f"{out}/rust-{r}.json"))
    runs.setdefault("lesionseg", []).append(rust)
    torch = json.load(open(f"{out}/torch-{r}.json"))
    for t in torch if isinstance(torch, list) else [torch]:
        runs.setdefault(f"pytorch {t['mode']}", []).append(t)
med = {k: (statistics.median(x["forward_median_ms"] for x in v), statistics.median(x["step_median_ms"] for x in v))
       for k, v in runs.items()}
for k, (f, s) in med.items():
    print(f"   {k:<18} inference {f:8.1f} ms   training step {s:8.1f} ms")
rf, rs = med["lesionseg"]
for k, (f, s) in med.items():
    if k == "lesionseg":
        continue
    print(f"RATIO lesionseg/{k}: inference {size}x{size} b1 {rf / f:.2f}x   training step {size}x{size} b1 {rs / s:.2f}x")
EOF
