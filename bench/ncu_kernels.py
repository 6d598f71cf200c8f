#!/usr/bin/env python3
"""Per-kernel medians of an Nsight Compute CSV log (bench/ncu_decode.sh writes them).

    python3 bench/ncu_kernels.py LOG.csv [...]

For every kernel name, in order of first launch: how many launches, the median duration (µs),
DRAM and SM throughput (% of peak), achieved occupancy (% of the warps a multiprocessor holds),
grid and block size; then the sum of the medians. Next to each log, the step time decode_bench
measured for the same shape (LOG.bench.jsonl, when there), for comparison with the serialized sum.
"""
import collections
import csv
import json
import os
import re
import statistics
import sys

# ncu reports a duration in the unit that suits it; COLUMNS scales from nanoseconds.
TO_NS = {"nsecond": 1.0, "usecond": 1e3, "msecond": 1e6}

COLUMNS = [
    ("gpu__time_duration.sum", "µs", 1e-3),
    ("dram__throughput.avg.pct_of_peak_sustained_elapsed", "dram%", 1.0),
    ("sm__throughput.avg.pct_of_peak_sustained_elapsed", "sm%", 1.0),
    ("sm__warps_active.avg.pct_of_peak_sustained_active", "occ%", 1.0),
    ("launch__grid_size", "grid", 1.0),
    ("launch__block_size", "block", 1.0),
]


def short(name):
    """The kernel's name without its template arguments and parameter list."""
    name = re.sub(r"\(.*$", "", name)
    depth, out = 0, []
    for ch in name:
        depth += ch == "<"
        if depth == 0:
            out.append(ch)
        depth -= ch == ">"
    return "".join(out).replace("void ", "").replace("kvcar::kernels::detail::", "").strip()


def summarize(path):
    with open(path) as f:
        rows = [line for line in f if line.startswith('"')]
    values = collections.defaultdict(lambda: collections.defaultdict(list))
    order = []
    for r in csv.DictReader(rows):
        name = short(r["Kernel Name"])
        if name not in values:
            order.append(name)
        v = float(r["Metric Value"].replace(",", ""))
        if r["Metric Name"] == "gpu__time_duration.sum":
            v *= TO_NS.get(r.get("Metric Unit", ""), 1.0)
        values[name][r["Metric Name"]].append(v)
    print(f"== {os.path.basename(path)}")
    bench = path[:-4] + ".bench.jsonl"
    if os.path.exists(bench):
        with open(bench) as f:
            for line in f:
                if line.startswith("{"):
                    row = json.loads(line)
                    print(f"   decode_bench: {1e3 * row['ms']:.1f} µs ({row.get('path', '?')}, "
                          f"{row.get('splits', '?')} splits, check {row.get('check', '?')})")
    print("   " + f"{'kernel':<40}" + f"{'n':>4}" + "".join(f"{c[1]:>9}" for c in COLUMNS))
    total = 0.0
    for name in order:
        m = values[name]
        n = len(m["gpu__time_duration.sum"])
        cells = []
        for metric, _, scale in COLUMNS:
            xs = m.get(metric, [])
            cells.append(statistics.median(xs) * scale if xs else float("nan"))
        total += cells[0]
        print("   " + f"{name[:40]:<40}{n:>4}" + "".join(f"{c:9.1f}" for c in cells))
    print(f"   sum of medians: {total:.1f} µs")


def main():
    for path in sys.argv[1:]:
        summarize(path)


if __name__ == "__main__":
    main()
