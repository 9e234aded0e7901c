#!/usr/bin/env python3
"""Criterion's console output (from `cargo bench --bench ops` or the prebuilt
benchmark executable) as a table: benchmark, median time, median throughput
(criterion's "elem/s" is FLOP/s for the convolutions, see benches/ops.rs).

  python3 bench/criterion_table.py bench.log                 # every benchmark
  python3 bench/criterion_table.py bench.log --only train_step,inference
"""

import argparse
import re
import sys

NAME = re.compile(r"^([a-z0-9_-]+/\S+)(?:\s+time:.*)?$")
TIME = re.compile(r"time:\s+\[\S+ \S+ (\S+ \S+) \S+ \S+\]")
THRPT = re.compile(r"thrpt:\s+\[\S+ \S+ (\S+ \S+) \S+ \S+\]")


def parse(lines):
    rows, name = [], None
    for line in lines:
        line = line.rstrip()
        if line.startswith("Benchmarking "):
            continue
        m = NAME.match(line)
        if m:
            name = m.group(1)
        m = TIME.search(line)
        if m and name:
            rows.append({"name": name, "time": m.group(1), "thrpt": ""})
            name = None
            continue
        m = THRPT.search(line)
        if m and rows and not rows[-1]["thrpt"]:
            rows[-1]["thrpt"] = m.group(1).replace("elem/s", "FLOP/s")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("log")
    ap.add_argument("--only", help="comma-separated parts of names to keep")
    a = ap.parse_args()
    try:
        with open(a.log, errors="replace") as f:
            rows = parse(f)
    except OSError as e:
        print(f"no criterion log: {e}")
        return 1
    if a.only:
        keep = a.only.split(",")
        rows = [r for r in rows if any(k in r["name"] for k in keep)]
    if not rows:
        print(f"no criterion results in {a.log}")
        return 1
    width = max(len(r["name"]) for r in rows)
    print(f"{'benchmark (criterion median)':<{width}} {'time':>12} {'throughput':>16}")
    for r in rows:
        print(f"{r['name']:<{width}} {r['time']:>12} {r['thrpt']:>16}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
