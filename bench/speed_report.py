#!/usr/bin/env python3
"""Turns one run of bench/run_speed.sh into docs/results/speed.md and docs/results/speed.png.

    python3 bench/speed_report.py DATA_DIR [--out docs/results]
DATA_DIR holds kvcar.jsonl, peers.jsonl (and flashinfer.jsonl when FlashInfer ran), gpu.txt,
date.txt from the same session on the same GPU; each row carries the "round" of the
interleaved run it came from (rows without one count as round 0). Every number is the median
over rounds, with the spread (min–max over rounds) beside it; a ratio is computed per round
(peer time / kvcar time of that round), and where its spread covers 1.0 the report calls it
parity, not a speed-up. Capacity is computed from the caches' exact byte accounting
(bytes_per_token reported by the benchmark), not measured by allocation.
"""
import argparse
import json
import os
import statistics
from collections import defaultdict

CODECS = ["identity-f16", "int8", "linear-head-d/2", "linear-layer-d/2", "linear-layer-d/2-int8",
          "linear-layer-d/4", "autoencoder-layer-d/2"]
LAYERS = {"gpt2-small": 12, "tinyllama": 22, "llama3-8b": 32}
BUDGET = 40 * 2**30  # bytes of KV cache memory, e.g. a 48 GB card after weights


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--note", default="", help="a line printed under the header (e.g. the commit)")
    args = ap.parse_args()
    kv_rows = load(os.path.join(args.data, "kvcar.jsonl"))
    peers_path = os.path.join(args.data, "peers.jsonl")
    # A run may lack a side (peers.jsonl absent: no SDPA or copy rows); its columns and the
    # targets that need it then say so instead of failing.
    peer_rows = load(peers_path) if os.path.exists(peers_path) else []
    fi_path = os.path.join(args.data, "flashinfer.jsonl")
    fi_rows = load(fi_path) if os.path.exists(fi_path) else []
    gpu_line = open(os.path.join(args.data, "gpu.txt")).read().strip().splitlines()[-1]
    date = open(os.path.join(args.data, "date.txt")).read().strip()
    key = lambda r: (r["model"], r["batch"], r["context"])
    rnd = lambda r: r.get("round", 0)

    # Per (shape, side): {round: row}. A side is a peer name or a kvcar codec.
    by_round = defaultdict(dict)
    for r in peer_rows + fi_rows:
        if r["peer"] != "copy-1GiB":
            by_round[(key(r), r["peer"])][rnd(r)] = r
    for r in kv_rows:
        by_round[(key(r), r["codec"])][rnd(r)] = r
    rounds = sorted({rnd(r) for r in kv_rows})

    def med(k, side, field="ms"):
        rows = by_round.get((k, side))
        return statistics.median(r[field] for r in rows.values()) if rows else None

    def med_row(k, side):
        """The median-time row's fields with ms = the median over rounds (None if absent)."""
        rows = by_round.get((k, side))
        if not rows:
            return None
        out = dict(next(iter(rows.values())))
        out["ms"] = statistics.median(r["ms"] for r in rows.values())
        if "stored_gbps" in out:
            out["stored_gbps"] = out["stored_bytes"] / out["ms"] / 1e6
        out["check"] = "FAIL" if any(r.get("check") == "FAIL" for r in rows.values()) else \
            out.get("check", "n/a")
        out["check_err"] = max((r.get("check_err", 0.0) for r in rows.values()), default=0.0)
        return out

    def ratio(k, peer, codec):
        """(median, min, max) over rounds of peer ms / kvcar ms, pairing rows of one round."""
        p, c = by_round.get((k, peer)), by_round.get((k, codec))
        if not p or not c:
            return None
        rs = [p[r]["ms"] / c[r]["ms"] for r in c if r in p]
        if not rs:  # rounds not paired (old data): the medians' ratio
            rs = [med(k, peer) / med(k, codec)]
        return statistics.median(rs), min(rs), max(rs)

    def fmt_ratio(t):
        if t is None:
            return "–"
        m, lo, hi = t
        if lo <= 1.0 <= hi and len(rounds) > 1:
            return f"parity ({lo:.2f}–{hi:.2f})"
        return f"{m:.2f}× ({lo:.2f}–{hi:.2f})" if hi > lo else f"{m:.2f}×"

    sdpa = {k: med_row(k, "sdpa") for (k, side) in by_round if side == "sdpa"}
    flashinfer = {k: med_row(k, "flashinfer") for (k, side) in by_round if side == "flashinfer"}
    copy = {k: med_row(k, "copy") for (k, side) in by_round if side == "copy"}
    for k, r in copy.items():
        r["gbps"] = 2 * r["kv_bytes"] / r["ms"] / 1e6
    ceilings = [r for r in peer_rows if r["peer"] == "copy-1GiB"]
    ceiling = {"gbps": statistics.median(r["gbps"] for r in ceilings)} if ceilings else None
    ours = {(key(r), r["codec"]): med_row(key(r), r["codec"]) for r in kv_rows}
    kv = list(ours.values())
    shapes = sorted({key(r) for r in kv_rows}, key=lambda k: (list(LAYERS).index(k[0]), k[1], k[2]))
    torch_version = next((r["torch"] for r in peer_rows if "torch" in r), "unknown")
    backends = sorted({r.get("sdpa_backend", "unknown") for r in peer_rows if r["peer"] == "sdpa"})
    failed = sorted({(k, c) for (k, c), r in ours.items() if r["check"] == "FAIL"} |
                    {(k, "flashinfer") for k, r in flashinfer.items() if r["check"] == "FAIL"})

    md = []
    md.append("# Decode attention speed\n")
    grid = "full" if any(k[2] == 2048 for k in shapes) else "quick"
    pgrid = "all" if grid == "full" else "quick"
    md.append(f"GPU: `{gpu_line}`. Date: {date}. One session of `bash bench/run_speed.sh {grid} "
              f"<dir> {max(len(rounds), 1)}` (kvcar `decode_bench --grid {grid}`, `bench/peers.py "
              f"--shapes {pgrid}` and `flashinfer_peer --grid {grid}`, interleaved); report: "
              f"`python3 bench/speed_report.py {args.data} --out {args.out}`. Raw rows: "
              f"`{args.data}/`.\n")
    if args.note:
        md.append(args.note + "\n")
    acts = "/".join(sorted({r.get("activations", "f32") for r in kv_rows}))
    md.append(f"Method: one query token per sequence, one layer, kvcar's q/out in {acts} "
              "(`decode_bench --activations`), K/V as each codec stores "
              "them; every side captured into a CUDA graph (launch gaps out of the interval), 3 "
              "warm-ups, L2 flushed (2× its size written) before every run, median of 31 runs; "
              f"{max(len(rounds), 1)} round(s), the sides interleaved in rotating order, and each "
              "number below is the median over rounds with the min–max over rounds beside it. "
              "Peers on the same logical shape: "
              + (f"PyTorch {torch_version} `scaled_dot_product_attention` (fp16 q/K/V, "
                 f"`enable_gqa` for GQA; backend chosen: {', '.join(backends)}), " if sdpa else
                 "PyTorch SDPA: **no rows in this run** (see the note above), ")
              + ("FlashInfer's `BatchDecodeWithPagedKVCache` (fp16 paged K/V, page size 16, "
                 "fp16 q/o; `bench/flashinfer_peer.cu`), " if flashinfer else
                 "FlashInfer: not in this run (no headers; see `bench/fetch_flashinfer.sh`), ")
              + ("and a device-to-device copy of the same fp16 K/V bytes. Large-copy ceiling: "
                 f"{ceiling['gbps']:.0f} GB/s (read + write).\n" if ceiling else
                 "and no copy rows in this run, so no `% copy`.\n"))
    md.append("`x SDPA` = SDPA time / kvcar time (above 1 = kvcar faster); `x FI` the same against "
              "FlashInfer; where the spread over rounds covers 1.0 the cell says parity. `% copy` = "
              "bytes kvcar read per second / the DRAM traffic rate (read + write) of a copy of the "
              "same fp16 K/V bytes. Every kvcar row checks its output against a CPU reference "
              "(`check` in the JSONL).\n")
    if failed:
        md.append("**Output checks failed** (these rows time a wrong result): " +
                  ", ".join(f"{k[0]} B{k[1]} L{k[2]} {c}" for k, c in failed) + "\n")
    else:
        md.append("Output checks: every checked row agreed with the reference.\n")

    md.append("## Targets of issue 15 and where they stand\n")
    md.append("Each target over the shapes it names; a shape meets it when the ratio's median over "
              "rounds does. \"not measured\": this run has no rows of the side the target needs.\n")

    def target(label, codecs, pred, value, bound):
        """One row: the span of value(k, codec) over the shapes pred(k) picks, and how many meet
        bound. value returns None where this run lacks the side it needs."""
        vals = [(k, c, value(k, c)) for k in shapes if pred(k) for c in codecs
                if (k, c) in ours]
        got = [(k, c, v) for k, c, v in vals if v is not None]
        if not got:
            md.append(f"| {label} | not measured | – |")
            return
        ok = sum(1 for _, _, v in got if v >= bound)
        worst = min(got, key=lambda x: x[2])
        verdict = "yes" if ok == len(got) and len(got) == len(vals) else \
            f"no: {ok} of {len(got)}" + ("" if len(got) == len(vals) else f" measured of {len(vals)}")
        md.append(f"| {label} | {min(v for *_, v in got):.2f}–{max(v for *_, v in got):.2f} "
                  f"(lowest: {worst[1]} {worst[0][0]} B{worst[0][1]} L{worst[0][2]}) | {verdict} |")

    def vs(peer):
        return lambda k, c: (ratio(k, peer, c) or (None,))[0]

    def of_copy(k, c):
        return ours[(k, c)]["stored_gbps"] / copy[k]["gbps"] if k in copy else None

    not_ae = [c for c in CODECS if not c.startswith("autoencoder")]
    md.append("| target | measured | met? |")
    md.append("| --- | --- | --- |")
    long_ctx = lambda k: k[2] >= 2048
    target("every codec but the autoencoder ≥ 1.0× SDPA, context ≥ 2k", not_ae, long_ctx,
           vs("sdpa"), 1.0)
    target("every codec but the autoencoder ≥ 1.0× FlashInfer, context ≥ 2k", not_ae, long_ctx,
           vs("flashinfer"), 1.0)
    target("identity-f16 ≥ 0.95× FlashInfer, every shape", ["identity-f16"], lambda k: True,
           vs("flashinfer"), 0.95)
    target("identity-f16 and int8 ≥ 85% of copy, batch × context ≥ 64k",
           ["identity-f16", "int8"], lambda k: k[1] * k[2] >= 65536, of_copy, 0.85)
    target("every codec ≥ 70% of copy, batch 1, context ≥ 16k", not_ae,
           lambda k: k[1] == 1 and k[2] >= 16384, of_copy, 0.70)
    target("linear d/2 ≥ 1.8× SDPA, batch × context ≥ 128k", ["linear-layer-d/2"],
           lambda k: k[1] * k[2] >= 131072, vs("sdpa"), 1.8)
    target("linear d/2 + int8 ≥ 3× SDPA, batch × context ≥ 128k", ["linear-layer-d/2-int8"],
           lambda k: k[1] * k[2] >= 131072, vs("sdpa"), 3.0)
    md.append("")

    md.append("## All shapes\n")
    md.append("| model | B | L | SDPA ms | FlashInfer ms | copy GB/s | " + " | ".join(CODECS) + " |")
    md.append("| --- | ---: | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in CODECS) + " |")
    for k in shapes:
        s_ = sdpa.get(k)
        f_ = flashinfer.get(k)
        cells = []
        for c in CODECS:
            r = ours.get((k, c))
            if not r:
                cells.append("–")
                continue
            cell = f"{r['ms']:.3f} ms"
            if s_:
                cell += f", {fmt_ratio(ratio(k, 'sdpa', c))} SDPA"
            if f_:
                cell += f", {fmt_ratio(ratio(k, 'flashinfer', c))} FI"
            if k in copy:
                cell += f", {100 * r['stored_gbps'] / copy[k]['gbps']:.0f}%"
            if r["check"] == "FAIL":
                cell += f", **check FAIL {r['check_err']:.1e}**"
            cells.append(cell)
        fi_cell = f"{f_['ms']:.3f}" if f_ else "–"
        cp_cell = f"{copy[k]['gbps']:.0f}" if k in copy else "–"
        sd_cell = f"{s_['ms']:.3f}" if s_ else "–"
        md.append(f"| {k[0]} | {k[1]} | {k[2]} | {sd_cell} | {fi_cell} | {cp_cell} | " +
                  " | ".join(cells) + " |")
    md.append("\nEach cell: kvcar time (median over rounds), × SDPA and × FlashInfer (median, with "
              "the min–max over rounds; parity where that covers 1.0), % of copy bandwidth on the "
              "bytes this codec stores.\n")

    md.append("## Capacity: longest context at batch 64 in 40 GiB of KV memory\n")
    md.append("All layers of the model (GPT-2 small 12, TinyLlama 22, Llama-3-8B 32), from the caches' exact "
              "bytes per token (K + V, one layer, as the benchmark's caches reported them) × layers.\n")
    md.append("| model | " + " | ".join(CODECS) + " |")
    md.append("| --- | " + " | ".join("---:" for _ in CODECS) + " |")
    for m, layers in LAYERS.items():
        cells = []
        for c in CODECS:
            r = next((r for r in kv if r["model"] == m and r["codec"] == c), None)
            if not r:
                cells.append("–")
                continue
            per_token = r["bytes_per_token"] * layers
            cells.append(f"{BUDGET // (64 * per_token):,} ({r['bytes_per_token']} B/tok/layer)")
        md.append(f"| {m} | " + " | ".join(cells) + " |")
    md.append("")

    md.append("## What limits each codec\n")
    md.append("- **identity fp16 / int8**: GQA heads of f16 and int8 records (head dim 64/128, 2/4/8 query heads "
              "per KV head) run on tensor cores (`kernels/decode/direct_mma.cuh`): each 16-token tile "
              "is read once from registers for all query heads of its KV head, with two `mma.sync` products "
              "per tile (scores and P·V), one page lookup per tile and the next tile loading while the current "
              "one computes. MHA (GPT-2 small) takes the same kernel with one query head per KV head. bf16/fp32/fp8 "
              "records, head dims other than 64/128 and RoPE on read use the CUDA-core direct kernel "
              "(lane-split dot products and shuffle reductions). At batch ≥ 32 and contexts ≥ 16k it reads "
              "at the copy rate, so it can only tie SDPA there. It misses at batch 1 and 8 (a few CTAs per "
              "KV head do not fill the GPU) and on TinyLlama-like heads below 32k (4 KV heads of 64: little "
              "work per tile and instruction). On an H200 (docs/results/h200/speed.md), whose copy rate is "
              "1.4× an H100's, it misses in more shapes than on an H100: per-tile latency, not DRAM, "
              "is then the likely limit. SDPA's own time at "
              "batch 1 moved by up to 3x between two runs on the same day (launch-bound at these sizes); "
              "the batch ≥ 32 ratios were stable. Before/after the tensor-core path: "
              "docs/results/speed-direct-mma.md.\n"
              "- **int8**: dequantized in registers with packed half2 math on the tensor-core path, so it reads "
              "half the bytes of f16 for about the same instructions: faster than SDPA at batch ≥ 32 and "
              "≥ 4k, while the dequantization keeps it below the copy rate on its own bytes.\n"
              "- **linear (latent space)**: whole-layer latents run on tensor cores "
              "(`kernels/latent_decode_attention.cuh`: query projection, split kernel, merge, lift); per-head "
              "latents on the CUDA-core latent path. The split kernel is flash-decoding over the latent: "
              "32-token tiles by cp.async (K and V in separate copy groups, requested a tile ahead), "
              "S = Qz·Zᵀ and P·Z_v by `mma.sync` with `ldmatrix` operands, an online softmax whose "
              "reductions stay in registers. On one H100 it made linear-layer-d/2 1.1–2.4× faster than the "
              "previous kernel (docs/results/speed-data/h100-latent-v2: before.jsonl, after.jsonl, one "
              "session). What limits it: at batch ≥ 32 and 32k tokens it reads at 80–87% of the copy rate "
              "(GPT-2-small- and Llama-3-8B-like), so half the bytes give 1.6–1.7× SDPA, not 2×: the "
              "1.8× needs ≥ 90% of the copy rate. Nsight Compute (H100, Llama-3-8B-like B32 L4096) "
              "found it latency-bound with one CTA of 8 warps per multiprocessor (shared memory for Qz "
              "and two stages of d = 512 latents, registers for the accumulators of 32 heads × 512 "
              "columns); a 16-warp variant (128 registers a thread) left f16 latents unchanged and made "
              "int8 latents 1.15–1.2× faster (speed-data/h100-latent-v2/wide-*.jsonl), so for f16 the "
              "rest is per-tile work, the tail of few CTAs at 4k (128 CTAs at B32), and the three small "
              "kernels around the split kernel (projection, merge, lift), which also make batch 1 lose to "
              "SDPA; the merge now spreads an item's columns over CTAs and its splits over warps (it was "
              "a CTA per head looping over hundreds of splits), which made batch-1 latents 1.1–1.5× "
              "faster (speed-data/h100-latent-v3). TinyLlama-like latents (d = 128 for 32 heads) carry "
              "little work per byte and reach only ~50% of the copy rate. int8 / fp8 latents are read in "
              "place: each lane widens 4 raw bytes into its MMA fragment in registers (Qz's columns "
              "permuted to match K; V through movmatrix), V's per-token scale joins the probability and "
              "its offset a per-head sum, so no conversion pass or fp16 copy of the tile is left; that "
              "made them 1.3–1.6× faster at batch ≥ 32 (speed-data/h100-latent-v3, one session). They "
              "still run slower than f16 latents of the same width on their half of the bytes: "
              "Nsight Compute finds the kernel issue-bound (~0.5 instructions per cycle per scheduler "
              "with 4 warps each), not DRAM-bound, so the 3× target for linear + int8 stays far off.\n"
              "- **autoencoder**: runs on tensor cores in the decoder's hidden space "
              "(`kernels/decode/autoencoder_tensor_cores.cuh`): the decoder's second layer is affine, so "
              "scores are q̃·a + q·b2 and outputs W2ᵀ(Σ p a) + b2 with a = lrelu(W1 z + b1) computed per "
              "32-token tile by `mma.sync`; only d·h multiply-adds per token and stream remain (Llama-3-8B-"
              "like, d = 512, h = 1024: 0.5 M), 275 GFLOP at B32 L4096, whose bound is ~0.28 ms at ~990 "
              "TFLOP/s of dense fp16 tensor-core math. It ran at 2.46 ms there on one H100 "
              "(docs/results/speed-data/h100-latent-v2/autoencoder-tc.jsonl; 94.9 ms on the CUDA-core "
              "path before): ~11% of that bound. Every CTA re-reads W1 from L2 per tile and the whole "
              "split's softmax waits for its scores, which is what holds it there.\n")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "speed.md"), "w") as f:
        f.write("\n".join(line for line in md if line is not None) + "\n")

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return
    base, base_name = (sdpa, "PyTorch SDPA") if sdpa else (flashinfer, "FlashInfer")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
    for ax, m in zip(axes, LAYERS):
        for c in CODECS:
            xs, ys = [], []
            for k in shapes:
                if k[0] == m and k[1] == 32 and (k, c) in ours and k in base:
                    xs.append(k[2])
                    ys.append(base[k]["ms"] / ours[(k, c)]["ms"])
            if xs:
                ax.plot(xs, ys, marker="o", label=c)
        ax.axhline(1.0, color="black", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{m}, batch 32")
        ax.set_xlabel("context (tokens)")
    axes[0].set_ylabel(f"speed vs {base_name} (×, higher is faster)")
    axes[-1].legend(fontsize=8)
    fig.suptitle(f"kvcar decode attention vs {base_name} — {gpu_line.split(',')[0]}, {date[:10]}")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "speed.png"), dpi=110)


if __name__ == "__main__":
    main()
