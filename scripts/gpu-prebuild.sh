#!/usr/bin/env bash
# Builds, here (Rust toolchain; no GPU needed), what scripts/gpu-check.sh runs on a
# GPU machine that has the NVIDIA driver but no Rust toolchain and no network: the
# `lesionseg` binary, the GPU-relevant test executables and the criterion
# benchmarks (benches/ops.rs), stripped, in .gpu/
# (git-ignored), with .gpu/BUILD_INFO (commit, date, profile, source path).
#
#   scripts/gpu-prebuild.sh           # release profile (what we time and ship)
#   scripts/gpu-prebuild.sh --dev     # dev profile (quicker to build; same checks)
#   GPU_TESTS="gpu conv2d_kernels" scripts/gpu-prebuild.sh   # which tests/*.rs to include
#
# Then copy the repository with .gpu/ to the GPU machine (or hand .gpu to a remote
# runner as an extra path) and run scripts/gpu-check.sh there. The kernels are
# embedded in every executable (compiled here by the pinned NVRTC 13.0, which
# scripts/test.sh installs into .cache/nvidia), so the GPU machine needs only the
# driver; the build fails here rather than ship executables that would need NVRTC.
set -euo pipefail
cd "$(dirname "$0")/.."
export LESIONSEG_EMBED=require

profile=release
flags=(--release)
if [ "${1:-}" = "--dev" ]; then
  profile=dev
  flags=()
fi
# tests/gpu.rs and the kernel tests (tests/*_kernels.rs: cuda variants beside the emulator's).
GPU_TESTS=${GPU_TESTS:-gpu model $(cd tests && ls -- *_kernels.rs 2>/dev/null | sed 's/\.rs$//' | tr '\n' ' ')}

rm -rf .gpu
mkdir -p .gpu/tests
echo "== building lesionseg and the test executables ($profile profile)"
cargo build "${flags[@]}" --bin lesionseg --message-format=json-render-diagnostics >.gpu/build.json
test_args=()
for t in $GPU_TESTS; do
  if [ -f "tests/$t.rs" ]; then test_args+=(--test "$t"); else echo "note: no tests/$t.rs; skipping it"; fi
done
cargo test "${flags[@]}" --no-run "${test_args[@]}" --message-format=json-render-diagnostics >>.gpu/build.json
# The criterion benchmarks (always the bench profile: optimised like release).
cargo bench --no-run --bench ops --message-format=json-render-diagnostics >>.gpu/build.json

# Pick the executables out of cargo's JSON messages: the binary, and each wanted
# integration test (tests/<name>.rs) by its target name.
python3 - "$GPU_TESTS" <<'EOF'
import json, shutil, subprocess, sys
wanted = set(sys.argv[1].split())
found = set()
for line in open(".gpu/build.json"):
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
        continue
    target, test = msg["target"], msg["profile"]["test"]
    if target["kind"] == ["bin"] and target["name"] == "lesionseg" and not test:
        dst = ".gpu/lesionseg"
    elif target["kind"] == ["test"] and target["name"] in wanted:
        dst = ".gpu/tests/" + target["name"]
        found.add(target["name"])
    elif target["kind"] == ["bench"] and target["name"] == "ops":
        dst = ".gpu/bench-ops"
    else:
        continue
    # Debug info is most of the size; the GPU runner carries at most 64 MiB.
    subprocess.run(["strip", "--strip-debug", "-o", dst, msg["executable"]], check=True)
EOF
rm -f .gpu/build.json

commit=$(git rev-parse --short HEAD)
git diff --quiet HEAD -- src kernels tests build.rs Cargo.toml || commit="$commit+uncommitted changes"
cat >.gpu/BUILD_INFO <<EOF
commit=$commit
built=$(date -u +%Y-%m-%dT%H:%M:%SZ)
profile=$profile
root=$PWD
EOF
# The binary as the GPU machine will run it: no NVRTC to be found, every kernel embedded.
no_nvrtc=$(mktemp -d)
LESIONSEG_NVRTC=$no_nvrtc .gpu/lesionseg info | sed -n '/^embedded kernels/,/^NVRTC/p'
rmdir "$no_nvrtc"
du -sh .gpu
ls -l .gpu .gpu/tests
