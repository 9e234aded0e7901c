#!/usr/bin/env bash
# `lesionseg eval` against the official ISIC scorer (isic-challenge-scoring 5.8.0 on
# PyPI), bit for bit, on generated prediction sets (scripts/official_scorer.py).
#
#   scripts/compare_official_scorer.sh [LESIONSEG_BINARY]   (default: target/debug/lesionseg)
#
# The package needs Python >= 3.13. A virtual environment with it is made once in
# .cache/isic-scoring (git-ignored), pinned: numpy and pandas decide the order in
# which the official code sums, so they are pinned with it. When no such Python is
# found or the install fails (no network), this prints SKIPPED and the reason and
# exits 0, unless LESIONSEG_REQUIRE_OFFICIAL=1 (then 1).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${1:-${CARGO_TARGET_DIR:-target}/debug/lesionseg}
VENV=.cache/isic-scoring
PACKAGES="isic-challenge-scoring==5.8.0 numpy==2.5.5 pandas==3.1.1 pillow==13.0.0"

skip() {
  echo "official scorer comparison: SKIPPED ($1)"
  [ "${LESIONSEG_REQUIRE_OFFICIAL:-0}" = 1 ] && exit 1
  exit 0
}

[ -x "$BIN" ] || skip "no lesionseg binary at $BIN; build it first"

ready() { [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/packages" 2>/dev/null)" = "$PACKAGES" ]; }

if ! ready; then
  new_enough() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 13))' >/dev/null 2>&1; }
  PY=""
  for candidate in python3.14 python3.13 python3; do
    if command -v "$candidate" >/dev/null && new_enough "$candidate"; then PY=$candidate; break; fi
  done
  if [ -z "$PY" ] && command -v pyenv >/dev/null; then
    for v in $(pyenv versions --bare 2>/dev/null | sort -V -r); do
      candidate="$(pyenv root)/versions/$v/bin/python3"
      if [ -x "$candidate" ] && new_enough "$candidate"; then PY=$candidate; break; fi
    done
  fi
  [ -n "$PY" ] || skip "the package needs Python >= 3.13; none found (python3.14, python3.13, python3, pyenv)"
  echo "installing $PACKAGES into $VENV ($("$PY" --version))"
  rm -rf "$VENV.partial"
  if ! "$PY" -m venv "$VENV.partial" >/dev/null 2>&1; then
    rm -rf "$VENV.partial"
    skip "$PY cannot make a virtual environment"
  fi
  # shellcheck disable=SC2086
  if ! "$VENV.partial/bin/python" -m pip install --quiet --disable-pip-version-check $PACKAGES; then
    rm -rf "$VENV.partial"
    skip "pip install $PACKAGES failed (no network?)"
  fi
  echo "$PACKAGES" > "$VENV.partial/packages"
  rm -rf "$VENV" && mv "$VENV.partial" "$VENV"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/lesionseg-official.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
"$VENV/bin/python" scripts/official_scorer.py "$BIN" "$WORK"
