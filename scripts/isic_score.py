#!/usr/bin/env python3
"""An independent implementation of the ISIC 2018 Task 2 scorer, to cross-check
`lesionseg eval` (needs numpy and Pillow).

    python3 scripts/isic_score.py PRED_DIR TRUTH_DIR [lesionseg-score.json]

For every (attribute, image): truth and prediction binarised at > 128, TP/FP/FN/TN
divided by the image's pixel count, summed per attribute and over everything
(micro-averaged Jaccard). With a JSON from `lesionseg eval --json`, checks that every
number agrees to 1e-6 and exits non-zero otherwise.
"""
import json
import os
import re
import sys

import numpy as np
from PIL import Image

ATTRS = ["pigment_network", "negative_network", "streaks", "milia_like_cyst", "globules"]


def binary(path):
    a = np.asarray(Image.open(path))
    if a.ndim == 3:
        a = a[..., :3].max(axis=2)  # gray masks stored as RGB(A)
    if a.dtype == np.uint16:
        a = a >> 8
    return a > 128


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    pred_dir, truth_dir = sys.argv[1], sys.argv[2]
    sums = {a: np.zeros(4) for a in ATTRS}
    pattern = re.compile(r"^(.*)_attribute_(%s)\.png$" % "|".join(ATTRS))
    for root, _, files in os.walk(truth_dir):
        for name in sorted(files):
            m = pattern.match(name)
            if not m:
                continue
            t = binary(os.path.join(root, name))
            p = binary(os.path.join(pred_dir, name))
            n = t.size
            tp, fp = np.sum(t & p), np.sum(~t & p)
            fn, tn = np.sum(t & ~p), np.sum(~t & ~p)
            sums[m.group(2)] += np.array([tp, fp, fn, tn], dtype=np.float64) / n
    total = sum(sums.values())
    micro = total[0] / (total[0] + total[1] + total[2])
    per = {a: s[0] / (s[0] + s[1] + s[2]) if s[0] + s[1] + s[2] > 0 else 1.0 for a, s in sums.items()}
    for a in ATTRS:
        print(f"{a:<18} {per[a]:.6f}")
    print(f"micro-averaged Jaccard {micro:.6f}")
    if len(sys.argv) == 4:
        got = json.load(open(sys.argv[3]))
        diffs = [abs(got["micro_average"]["jaccard"] - micro)]
        diffs += [abs(got["attributes"][a]["jaccard"] - per[a]) for a in ATTRS]
        worst = max(diffs)
        print(f"max difference from {sys.argv[3]}: {worst:.2e}")
        sys.exit(0 if worst <= 1e-6 else 1)


if __name__ == "__main__":
    main()
