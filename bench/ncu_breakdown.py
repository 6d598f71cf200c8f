#!/usr/bin/env python3
"""Where a forward pass's GPU time goes: sums an ncu kernel-duration log by kind of work.

    ncu --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv \\
        --launch-skip N --launch-count M --log-file LOG.csv kvcar-serve ...
    python3 bench/ncu_breakdown.py LOG.csv[.gz] [--layers 22]

A forward pass is counted by its norm launches (two per layer and the final one): the time per
pass is the window's kernel time over (norm launches / (2 layers + 1)), so a window that cuts a
pass in two counts the fraction it holds. ncu runs the
kernels one at a time, so the sum is GPU work without overlap; the time the GPU waits for the
host is not in it (compare with the wall time per step of an unprofiled run).
"""
import argparse
import collections
import csv
import gzip
import re

# Kind of work -> kernel-name pattern (the first match wins).
KINDS = [
    ("GEMMs (cuBLAS bf16, bf16 GEMV)", r"nvjet|gemm|gemv|cutlass|xmma"),
    ("fp32 -> bf16 rounding of GEMM inputs", r"round_to_bf16"),
    ("prefill attention (tiles, context decode, staging)",
     r"prefill_tiles|gather_dense|stage_rows|expand_queries"),
    ("decode attention (split, merge, latent projections)",
     r"direct_mma|direct_|combine|latent_tc|decoded|autoencoder"),
    ("append (encode + page write)", r"append"),
    ("elementwise fp32 (norms, SwiGLU, residual, RoPE, split, embed)",
     r"silu|gelu|residual|rope|rmsnorm|layernorm|split_qkv|embed|gather_rows"),
]
NORM = r"rmsnorm_kernel|layernorm_kernel"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("logs", nargs="+")
    p.add_argument("--layers", type=int, default=22)
    a = p.parse_args()
    for path in a.logs:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt") as f:
            rows = [line for line in f if line.startswith('"')]
        ms = collections.Counter()
        total, norms, kernels = 0.0, 0, 0
        for r in csv.DictReader(rows):
            if r.get("Metric Name") != "gpu__time_duration.sum":
                continue
            name, t = r["Kernel Name"], float(r["Metric Value"].replace(",", "")) / 1e6
            total += t
            kernels += 1
            norms += bool(re.search(NORM, name))
            kind = next((k for k, rx in KINDS if re.search(rx, name)), "other")
            ms[kind] += t
        passes = norms / (2 * a.layers + 1) if norms else 1
        print(f"{path}: {kernels} kernels, {passes:.2f} forward passes, "
              f"{total / passes:.2f} ms of kernels per pass")
        print(f"  {'kind of work':<66} {'ms/pass':>8} {'share':>6}")
        for k, _ in KINDS + [("other", "")]:
            if ms[k]:
                print(f"  {k:<66} {ms[k] / passes:8.2f} {100 * ms[k] / total:5.1f}%")


if __name__ == "__main__":
    main()
