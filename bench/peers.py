#!/usr/bin/env python3
"""The peers kvcar's decode kernels are measured against, timed on the same GPU in the same run.

For each logical decode shape (batch B, query heads H, KV heads KV, head dim D, context L):
  sdpa   torch.nn.functional.scaled_dot_product_attention, one query token, fp16 K/V
  copy   a device-to-device copy of the same number of K/V bytes (the bandwidth ceiling:
         decode attention must read every cached byte once)
Timing, the same as decode_bench's: the call captured once into a CUDA graph (so that launch
gaps stay out of the interval; "timing": "eager" where capture fails), 3 warm-ups, L2 flushed
between runs (a write of 2x the L2 size), CUDA events around one replay, statistics.median of
--reps runs (31: the middle sample). Each row records the torch version and the SDPA backend
that PyTorch chose for the shape. Prints one JSON object per line.

    python3 bench/peers.py [--reps 31] [--shapes all|quick] [--round R] > peers.jsonl
"""
import argparse
import json
import statistics
import sys

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
        """Median time of fn() replayed from a CUDA graph; returns (ms, "graph" | "eager")."""
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        run, timing = fn, "eager"
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                fn()  # warm-up on the capture stream, as torch.cuda.graphs asks
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                fn()
            run, timing = graph.replay, "graph"
        except Exception as e:  # noqa: BLE001 - any capture failure falls back to eager timing
            print(f"peers.py: capture failed ({e}); timing eagerly", file=sys.stderr)
        torch.cuda.synchronize()
        times = []
        for _ in range(self.reps):
            self.flush.fill_(1.0)  # evict the previous run's data from L2
            start = torch.cuda.Event(enable_timing=True)
            stop = torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            stop.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(stop))
        return statistics.median(times), timing


def sdpa_backend(q, k, v, gqa):
    """The backend PyTorch's dispatcher picks for these inputs (its private chooser), or
    "unknown" where this torch version does not expose it."""
    try:
        from torch.nn.attention import SDPBackend
        choice = torch._fused_sdp_choice(q, k, v, None, 0.0, False, None, gqa)
        return SDPBackend(choice).name
    except Exception:  # noqa: BLE001
        try:
            return str(torch._fused_sdp_choice(q, k, v, enable_gqa=gqa))
        except Exception:  # noqa: BLE001
            return "unknown"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=31)
    ap.add_argument("--shapes", default="all", choices=["all", "quick"])
    ap.add_argument("--round", type=int, default=0, help="round number of an interleaved run")
    ap.add_argument("--model", default="", help="only this model's shapes (as decode_bench --model)")
    args = ap.parse_args()
    torch.manual_seed(0)
    timer = Timer(args.reps)
    gpu = torch.cuda.get_device_name(0)

    # The ceiling: one large copy, bytes read + bytes written.
    big = torch.empty(2**30 // 2, dtype=torch.float16, device="cuda").normal_()
    dst = torch.empty_like(big)
    ms, timing = timer.median_ms(lambda: dst.copy_(big))
    print(json.dumps({"peer": "copy-1GiB", "gpu": gpu, "ms": ms, "timing": timing,
                      "round": args.round, "torch": torch.__version__,
                      "gbps": 2 * big.numel() * 2 / ms / 1e6}), flush=True)
    del big, dst

    for model, b, h, kv, d, L in shapes(args.shapes):
        if args.model and model != args.model:
            continue
        q = torch.randn(b, h, 1, d, dtype=torch.float16, device="cuda")
        k = torch.randn(b, kv, L, d, dtype=torch.float16, device="cuda")
        v = torch.randn(b, kv, L, d, dtype=torch.float16, device="cuda")
        kv_bytes = 2 * k.numel() * 2
        gqa = h != kv
        ms_sdpa, t_sdpa = timer.median_ms(
            lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa))
        backend = sdpa_backend(q, k, v, gqa)
        flat = torch.cat([k.reshape(-1), v.reshape(-1)])
        out = torch.empty_like(flat)
        ms_copy, t_copy = timer.median_ms(lambda: out.copy_(flat))
        base = {"model": model, "gpu": gpu, "batch": b, "heads": h, "kv_heads": kv,
                "head_dim": d, "context": L, "kv_bytes": kv_bytes, "round": args.round,
                "reps": args.reps, "torch": torch.__version__}
        print(json.dumps({**base, "peer": "sdpa", "ms": ms_sdpa, "timing": t_sdpa,
                          "sdpa_backend": backend, "gbps": kv_bytes / ms_sdpa / 1e6}), flush=True)
        # gbps counts what a copy moves through DRAM, bytes read + bytes written: the ceiling
        # for a kernel that only reads.
        print(json.dumps({**base, "peer": "copy", "ms": ms_copy, "timing": t_copy,
                          "gbps": 2 * kv_bytes / ms_copy / 1e6}), flush=True)
        del q, k, v, flat, out
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
