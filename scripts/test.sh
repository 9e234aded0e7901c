#!/usr/bin/env bash
# The project's test command (the README's second set-up command; .ci/run calls it).
# Runs on a machine with no GPU: unit and integration tests on the CPU backend,
# against PyTorch goldens committed in tests/fixtures (no PyTorch needed here).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --check
else
  echo "rustfmt not installed; skipping the format check"
fi

echo "== cargo test (dev profile: our crate at opt-level 1, dependencies at 3)"
cargo test
