#!/usr/bin/env python3
"""`lesionseg eval` against the official ISIC scorer, bit for bit.

    python scripts/official_scorer.py LESIONSEG_BINARY [WORK_DIR]

Generates prediction sets (random image sizes, blobs and noise, empty and full
masks, attributes empty everywhere), scores each with the official package
(`isic_challenge_scoring.task2.score`, the ISIC 2018 Task 2 scorer) and with
`lesionseg eval --json`, and requires every figure to be exactly equal: per
attribute Jaccard and Dice, and the micro-averaged Jaccard and Dice. Exits 1 on
any difference. Needs the package (5.8.0) and its numpy, pandas and Pillow;
scripts/compare_official_scorer.sh installs them and runs this.

It also reports what summing per attribute first (the order lesionseg used before)
would have given, to show that the sets are sensitive to the summation order.
"""
import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image
from isic_challenge_scoring import task2

ATTRIBUTES = ["pigment_network", "negative_network", "streaks", "milia_like_cyst", "globules"]

# (images, smallest side, largest side, seed): a few large images, many small
# ones, and a larger set like a validation split.
SETS = [(8, 180, 420, 1), (40, 9, 120, 2), (120, 5, 64, 3)]


def mask(rng, h, w, kind):
    """A 0/255 mask: empty, full, blobs, or noise (ISIC masks are 0/255 PNGs)."""
    if kind == 0:
        return np.zeros((h, w), np.uint8)
    if kind == 1:
        return np.full((h, w), 255, np.uint8)
    if kind == 2:
        y, x = np.mgrid[0:h, 0:w]
        m = np.zeros((h, w), bool)
        for _ in range(rng.integers(1, 4)):
            cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(1, max(2, min(h, w)))
            m |= (y - cy) ** 2 + (x - cx) ** 2 < r * r
        return np.where(m, 255, 0).astype(np.uint8)
    return np.where(rng.random((h, w)) < rng.random(), 255, rng.integers(0, 129, (h, w))).astype(np.uint8)


def make_set(root, images, lo, hi, seed):
    rng = np.random.default_rng(seed)
    truth, pred = root / "truth", root / "pred"
    truth.mkdir(parents=True)
    pred.mkdir()
    # One attribute stays empty in truth and prediction everywhere (the vacuous case).
    vacuous = ATTRIBUTES[seed % len(ATTRIBUTES)]
    for i in range(images):
        h, w = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
        for attr in ATTRIBUTES:
            name = f"ISIC_{1000 + 7 * i:07d}_attribute_{attr}.png"
            kinds = (0, 0) if attr == vacuous else rng.integers(0, 4, 2)
            Image.fromarray(mask(rng, h, w, kinds[0]), "L").save(truth / name)
            Image.fromarray(mask(rng, h, w, kinds[1]), "L").save(pred / name)
    return truth, pred


def per_attribute_first(truth, pred):
    """The micro Jaccard when each attribute is summed first, then the five sums."""
    sums = {a: np.zeros(3) for a in ATTRIBUTES}
    for f in sorted(truth.iterdir()):
        t = np.asarray(Image.open(f)) > 128
        p = np.asarray(Image.open(pred / f.name)) > 128
        n = t.size
        attr = f.stem.split("_attribute_")[1]
        for j, v in enumerate([np.sum(t & p), np.sum(~t & p), np.sum(t & ~p)]):
            sums[attr][j] += v / n
    tp, fp, fn = (sum(sums[a][j] for a in ATTRIBUTES) for j in range(3))
    return tp / (tp + fp + fn)


def ulps(a, b):
    return abs(int(np.float64(a).view(np.int64)) - int(np.float64(b).view(np.int64)))


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    binary = sys.argv[1]
    work = pathlib.Path(sys.argv[2] if len(sys.argv) == 3 else tempfile.mkdtemp(prefix="lesionseg-official-"))
    failures, sensitive = 0, 0
    for images, lo, hi, seed in SETS:
        root = work / f"set{seed}"
        truth, pred = make_set(root, images, lo, hi, seed)
        official = task2.score(truth, pred)
        out = root / "lesionseg.json"
        subprocess.run([binary, "eval", "--pred", str(pred), "--truth", str(truth), "--json", str(out)],
                       check=True, stdout=subprocess.DEVNULL)
        ours = json.loads(out.read_text())
        pairs = [(f"{a} {m}", ours["attributes"][a][m], official[a][m]) for a in ATTRIBUTES for m in ("jaccard", "dice")]
        pairs += [(f"micro {m}", ours["micro_average"][m], official["micro_average"][m]) for m in ("jaccard", "dice")]
        bad = [(what, o, r) for what, o, r in pairs if o != r]
        old = per_attribute_first(truth, pred)
        sensitive += old != official["micro_average"]["jaccard"]
        print(f"set {seed}: {images} images of {lo}..{hi} px, {len(pairs)} figures: "
              f"{'all equal' if not bad else f'{len(bad)} DIFFER'}; micro Jaccard {float(official['overall'])!r} "
              f"(per-attribute-first order: {ulps(old, official['overall'])} ulp off)")
        for what, o, r in bad:
            print(f"  {what}: lesionseg {float(o)!r}, official {float(r)!r} ({ulps(o, r)} ulp)")
        failures += len(bad)
    print(f"summing per attribute first would differ from the official micro Jaccard in {sensitive} of {len(SETS)} sets")
    if failures:
        print(f"FAIL: {failures} figures differ from the official scorer")
        sys.exit(1)
    print("PASS: lesionseg eval equals isic-challenge-scoring bit for bit on every figure")


if __name__ == "__main__":
    main()
