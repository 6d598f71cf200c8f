#!/usr/bin/env python3
"""Compares decode_bench runs of several builds ("sides") made in one session on one GPU.

    python3 bench/ab_report.py AB.jsonl [--base before] [--md OUT.md]

AB.jsonl holds decode_bench rows, each with a "side" member added by the runner (for example
before / head / pdl, interleaved round by round, see docs/results/h200/ab-*.md for the command).
Per shape (model, codec, batch, context) and side it takes the median of the rows' ms over
rounds, then prints each side's time over the base side's: < 1 is faster than the base. The
summary gives, per side, the geometric mean of the ratios, their min and max, and how many
shapes are more than 3 % slower than the base (slower beyond the round-to-round noise that the
spread of the base side's own rounds shows, column "base spread").
"""
import argparse
import collections
import json
import math
import statistics
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("rows")
    ap.add_argument("--base", default="before")
    ap.add_argument("--md", default=None, help="write the tables as Markdown here too")
    a = ap.parse_args()

    ms = collections.defaultdict(list)  # (shape, side) -> [ms per round]
    sides, checks = [], collections.Counter()
    with open(a.rows) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            side = r.get("side", "?")
            if side not in sides:
                sides.append(side)
            shape = (r["model"], r["codec"], r["batch"], r["context"])
            ms[(shape, side)].append(float(r["ms"]))
            if r.get("check") == "FAIL":
                checks[side] += 1
    if a.base not in sides:
        sys.exit(f"ab_report: no rows of the base side '{a.base}' (sides: {sides})")
    shapes = sorted({s for s, _ in ms})
    others = [s for s in sides if s != a.base]
    out = []
    head = ["model", "codec", "batch", "context", f"{a.base} ms", "base spread"] + \
           [f"{s} / {a.base}" for s in others]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + " --- |" * len(head))
    ratios = collections.defaultdict(list)
    for shape in shapes:
        base = ms.get((shape, a.base))
        if not base:
            continue
        b = statistics.median(base)
        spread = (max(base) - min(base)) / b if len(base) > 1 else float("nan")
        row = [*map(str, shape), f"{b:.4f}", f"{100 * spread:.1f} %"]
        for s in others:
            v = ms.get((shape, s))
            if v:
                ratio = statistics.median(v) / b
                ratios[s].append(ratio)
                row.append(f"{ratio:.3f}")
            else:
                row.append("–")
        out.append("| " + " | ".join(row) + " |")
    summary = ["", f"| side | shapes | geomean / {a.base} | min | max | > 1.03 | check FAIL |",
               "| --- | --- | --- | --- | --- | --- | --- |"]
    for s in others:
        r = ratios[s]
        if not r:
            continue
        g = math.exp(sum(math.log(x) for x in r) / len(r))
        summary.append(f"| {s} | {len(r)} | {g:.3f} | {min(r):.3f} | {max(r):.3f} | "
                       f"{sum(x > 1.03 for x in r)} | {checks[s]} |")
    summary.append(f"| {a.base} | {len(shapes)} | 1 | | | | {checks[a.base]} |")
    text = "\n".join(summary + [""] + out) + "\n"
    print(text)
    if a.md:
        with open(a.md, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
