#!/usr/bin/env python3
"""Compare a `lesionseg forward` output file with a golden made by PyTorch.

    python3 scripts/compare_outputs.py OUT.safetensors GOLDEN.safetensors

Needs numpy and safetensors only. Tolerances (the foundation's): outputs
max|d| <= 1e-4 * max|ref|, losses relative 1e-5, each gradient relative L2 <= 1e-4.
Prints one line per tensor and exits non-zero if any tensor is out of tolerance or
missing.
"""
import sys

import numpy as np
from safetensors.numpy import load_file


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    got, want = load_file(sys.argv[1]), load_file(sys.argv[2])
    bad = 0
    for name in sorted(want):
        if name in ("input", "target_mask"):
            continue
        if name not in got:
            print(f"MISSING {name}")
            bad += 1
            continue
        g, w = got[name].astype(np.float64), want[name].astype(np.float64)
        if g.shape != w.shape:
            print(f"SHAPE   {name}: {g.shape} vs {w.shape}")
            bad += 1
            continue
        if name.startswith("grad."):
            den = np.linalg.norm(w)
            err = np.linalg.norm(g - w) / den if den > 0 else np.linalg.norm(g - w)
            ok, what = err <= 1e-4, f"rel L2 {err:.2e}"
        elif name.startswith("loss"):
            err = abs(g - w).max() / max(abs(w).max(), 1e-30)
            ok, what = err <= 1e-5, f"rel {err:.2e}"
        else:
            err = abs(g - w).max() / max(abs(w).max(), 1e-30)
            ok, what = err <= 1e-4, f"max|d|/max|ref| {err:.2e}"
        ok = ok and not np.isnan(g).any()
        bad += not ok
        print(f"{'ok     ' if ok else 'FAIL   '} {name}: {what}")
    print(f"{'all match' if bad == 0 else f'{bad} tensors out of tolerance'}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
