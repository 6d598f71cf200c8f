#!/usr/bin/env python3
"""The peers kvcar's decode kernels are measured against, timed on the same GPU in the same run.

For each logical decode shape (batch B, query heads H, KV heads KV, head dim D, context L):
  sdpa   torch.nn.functional.scaled_dot_product_attention, one query token, fp16 K/V
  copy   a device-to-device copy of the same number of K/V bytes (the bandwidth ceiling:
         decode attention must read every cached byte once)
Timing: CUDA events, warm-up, L2 flushed between runs (a write of 2x the L2 size), median of
--reps runs. Prints one JSON object per line.

    python3 bench/peers.py [--reps 30] [--shapes all|quick] > peers.jsonl
"""
import argparse
import json
import statistics

import torch
import torch.nn.functional as F

MODELS = {  # name: (query heads, KV heads, head dim)
    "gpt2-small": (12, 12, 64),
    "tinyllama": (32, 4, 64),
    "llama3-8b": (32, 8, 128),
}


def shapes(which):
    # The same grids as decode_bench's --grid full / quick.
    batches = [1, 8, 32, 64] if which == "all" else [1, 32, 64]
    contexts = [512, 2048, 4096, 8192, 16384, 32768] if which == "all" else [512, 4096, 32768]
    for model, (h, kv, d) in MODELS.items():
        for b in batches:
            for L in contexts:
                if 4.0 * b * kv * L * d > 24e9:  # keep fp16 K+V under 24 GB, as decode_bench does
                    continue
                yield model, b, h, kv, d, L


class Timer:
    def __init__(self, reps):
        self.reps = reps
        props = torch.cuda.get_device_properties(0)
        l2 = getattr(props, "L2_cache_size", 64 * 2**20) or 64 * 2**20
        self.flush = torch.empty(2 * l2 // 4, dtype=torch.float32, device="cuda")

    def median_ms(self, fn):
        for _ in range(3):
            fn()
        times = []
        for _ in range(self.reps):
            self.flush.fill_(1.0)  # evict the previous run's data from L2
            start = torch.cuda.Event(enable_timing=True)
            stop = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(stop))
        return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--shapes", default="all", choices=["all", "quick"])
    args = ap.parse_args()
    torch.manual_seed(0)
    timer = Timer(args.reps)
    gpu = torch.cuda.get_device_name(0)

    # The ceiling: one large copy, bytes read + bytes written.
    big = torch.empty(2**30 // 2, dtype=torch.float16, device="cuda").normal_()
    dst = torch.empty_like(big)
    ms = timer.median_ms(lambda: dst.copy_(big))
    print(json.dumps({"peer": "copy-1GiB", "gpu": gpu, "ms": ms,
                      "gbps": 2 * big.numel() * 2 / ms / 1e6}), flush=True)
    del big, dst

    for model, b, h, kv, d, L in shapes(args.shapes):
        q = torch.randn(b, h, 1, d, dtype=torch.float16, device="cuda")
        k = torch.randn(b, kv, L, d, dtype=torch.float16, device="cuda")
        v = torch.randn(b, kv, L, d, dtype=torch.float16, device="cuda")
        kv_bytes = 2 * k.numel() * 2
        gqa = h != kv
        ms_sdpa = timer.median_ms(
            lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa))
        flat = torch.cat([k.reshape(-1), v.reshape(-1)])
        out = torch.empty_like(flat)
        ms_copy = timer.median_ms(lambda: out.copy_(flat))
        base = {"model": model, "gpu": gpu, "batch": b, "heads": h, "kv_heads": kv,
                "head_dim": d, "context": L, "kv_bytes": kv_bytes}
        print(json.dumps({**base, "peer": "sdpa", "ms": ms_sdpa,
                          "gbps": kv_bytes / ms_sdpa / 1e6}), flush=True)
        # gbps counts what a copy moves through DRAM, bytes read + bytes written: the ceiling
        # for a kernel that only reads.
        print(json.dumps({**base, "peer": "copy", "ms": ms_copy,
                          "gbps": 2 * kv_bytes / ms_copy / 1e6}), flush=True)
        del q, k, v, flat, out
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
