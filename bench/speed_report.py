#!/usr/bin/env python3
"""Turns one run of bench/run_speed.sh into docs/results/speed.md and docs/results/speed.png.

    python3 bench/speed_report.py DATA_DIR [--out docs/results]
DATA_DIR holds kvcar.jsonl, peers.jsonl, gpu.txt, date.txt from the same run on the same GPU.
Every ratio compares numbers of that one run. Capacity is computed from the caches' exact
byte accounting (bytes_per_token reported by the benchmark), not measured by allocation.
"""
import argparse
import json
import os

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
    args = ap.parse_args()
    kv = load(os.path.join(args.data, "kvcar.jsonl"))
    peers = load(os.path.join(args.data, "peers.jsonl"))
    gpu_line = open(os.path.join(args.data, "gpu.txt")).read().strip().splitlines()[-1]
    date = open(os.path.join(args.data, "date.txt")).read().strip()
    key = lambda r: (r["model"], r["batch"], r["context"])
    sdpa = {key(r): r for r in peers if r["peer"] == "sdpa"}
    copy = {key(r): r for r in peers if r["peer"] == "copy"}
    ceiling = next(r for r in peers if r["peer"] == "copy-1GiB")
    ours = {(key(r), r["codec"]): r for r in kv}
    shapes = sorted({key(r) for r in kv}, key=lambda k: (list(LAYERS).index(k[0]), k[1], k[2]))

    md = []
    md.append("# Decode attention speed\n")
    md.append(f"GPU: `{gpu_line}`. Date: {date}. One run of `bash bench/run_speed.sh quick` "
              "(kvcar `build-bench/bench/decode_bench --grid quick --reps 30` and "
              "`python3 bench/peers.py --shapes quick --reps 30` in the same session); report: "
              f"`python3 bench/speed_report.py docs/results/speed-data`. Raw rows: "
              "`docs/results/speed-data/`.\n")
    md.append("Method: one query token per sequence, one layer, fp32 q/out, K/V as each codec stores "
              "them; CUDA events, 3 warm-ups, L2 flushed (2× its size written) before every run, "
              "median of 30. Peers on the same logical shape: PyTorch 2.11 "
              "`scaled_dot_product_attention` (fp16 q/K/V, `enable_gqa` for GQA) and a device-to-device "
              f"copy of the same fp16 K/V bytes. Large-copy ceiling: {ceiling['gbps']:.0f} GB/s "
              "(read + write).\n")
    md.append("`x SDPA` = SDPA time / kvcar time (above 1 = kvcar faster). `% copy` = bytes kvcar read per "
              "second / the DRAM traffic rate (read + write) of a copy of the same fp16 K/V bytes.\n")

    md.append("## Targets (issue 6) and where they stand\n")
    def ratios(codec, pred):
        out = []
        for k in shapes:
            r = ours.get((k, codec))
            if r and k in sdpa and pred(k):
                out.append((k, sdpa[k]["ms"] / r["ms"], r["stored_gbps"] / copy[k]["gbps"] if k in copy else None))
        return out
    big = lambda k: k[2] >= 4096
    ident = ratios("identity-f16", big)
    lin = ratios("linear-layer-d/2", big)
    lin8 = ratios("linear-layer-d/2-int8", big)
    def span(xs, i):
        vals = [x[i] for x in xs if x[i] is not None]
        return f"{min(vals):.2f}–{max(vals):.2f}" if vals else "n/a"
    md.append("| target | measured (context ≥ 4k, all models and batches) | met? |")
    md.append("| --- | --- | --- |")
    def met(xs, i, bound):
        ok = sum(1 for x in xs if x[i] is not None and x[i] >= bound)
        return "yes" if ok == len(xs) else f"no: met in {ok} of {len(xs)} shapes"
    md.append(f"| identity fp16 ≥ 0.95× SDPA | {span(ident, 1)}× | {met(ident, 1, 0.95)} |")
    md.append(f"| identity fp16 ≥ 85% of copy bandwidth | {span(ident, 2)} of copy | {met(ident, 2, 0.85)} |")
    md.append(f"| linear at 50% saved ≥ 1.8× SDPA | {span(lin, 1)}× | {met(lin, 1, 1.8)} |")
    md.append(f"| linear + int8 (≥ 75% saved) ≥ 3× SDPA | {span(lin8, 1)}× | {met(lin8, 1, 3.0)} |")
    md.append("")

    md.append("## All shapes\n")
    md.append("| model | B | L | SDPA ms | " + " | ".join(CODECS) + " |")
    md.append("| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in CODECS) + " |")
    for k in shapes:
        s = sdpa.get(k)
        cells = []
        for c in CODECS:
            r = ours.get((k, c))
            if not r:
                cells.append("–")
                continue
            cell = f"{r['ms']:.3f} ms, {s['ms'] / r['ms']:.2f}×" if s else f"{r['ms']:.3f} ms"
            if k in copy:
                cell += f", {100 * r['stored_gbps'] / copy[k]['gbps']:.0f}%"
            cells.append(cell)
        md.append(f"| {k[0]} | {k[1]} | {k[2]} | {s['ms']:.3f} | " + " | ".join(cells) + " |" if s else "")
    md.append("\nEach cell: kvcar time, × SDPA, % of copy bandwidth on the bytes this codec stores.\n")

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
              "per KV head) run on tensor cores (`kernels/direct_mma_decode_attention.cuh`): each 16-token tile "
              "is read once from registers for all query heads of its KV head, with two `mma.sync` products "
              "per tile (scores and P·V), one page lookup per tile and the next tile loading while the current "
              "one computes. MHA (GPT-2 small) takes the same kernel with one query head per KV head. bf16/fp32/fp8 "
              "records, head dims other than 64/128 and RoPE on read use the CUDA-core direct kernel "
              "(lane-split dot products and shuffle reductions). At batch ≥ 32 and long contexts it reads at "
              "about 3 TB/s, the copy rate, so it can only tie SDPA there; the misses are at batch 1 for "
              "Llama-3-8B-like heads, where 8 KV heads x a few splits do not fill the GPU. SDPA's own time at "
              "batch 1 moved by up to 3x between two runs on the same day (launch-bound at these sizes); "
              "the batch ≥ 32 ratios were stable. Before/after the tensor-core path: "
              "docs/results/speed-direct-mma.md.\n"
              "- **int8**: dequantized in registers with packed half2 math on the tensor-core path, so it reads "
              "half the bytes of f16 for about the same instructions: 1.4–1.6x SDPA at batch ≥ 32 (≥ 4k), "
              "while the dequantization keeps it below the copy rate on its own bytes (2.0–2.6 TB/s).\n"
              "- **linear (latent space)**: whole-layer latents run on tensor cores "
              "(`kernels/latent_decode_attention.cuh`: query projection, split kernel, merge + lift); per-head "
              "latents on the CUDA-core latent path. The query projection is spread over latent columns "
              "and the lift over output rows (hundreds of CTAs), and the splits merge in the shared combine "
              "kernel: that halved Llama-3-8B-like B32 L4096 (0.634 → 0.296 ms). The split kernel is now the "
              "limit: it streams the latents at ~1–1.4 TB/s because its shared memory allows one CTA per "
              "multiprocessor, so half the bytes do not yet mean half the time (d/2: 0.5–0.95x SDPA; d/4: "
              "up to 1.37x). int8 latents store half the bytes of f16 latents but run slower (the table's "
              "linear-layer-d/2-int8 column); that path was not profiled.\n"
              "- **autoencoder**: decodes every cached token through two dense layers in shared memory "
              "(CUDA cores, fp32). Its decoder costs d·h + h·D MACs per token per K/V stream "
              "(Llama-3-8B-like, D = h = 1024, d = 512: 1.5 M MACs); at B32 L4096 that is 0.8 TFLOP, "
              "whose bound is ~12 ms at the H200's ~67 TFLOP/s fp32 and ~0.8 ms at its ~990 TFLOP/s "
              "fp16 tensor-core rate; measured: see the table (tens of ms). Smaller, not faster — as the "
              "performance model in DESIGN.md predicts.\n")
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
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
    for ax, m in zip(axes, LAYERS):
        for c in CODECS:
            xs, ys = [], []
            for k in shapes:
                if k[0] == m and k[1] == 32 and (k, c) in ours and k in sdpa:
                    xs.append(k[2])
                    ys.append(sdpa[k]["ms"] / ours[(k, c)]["ms"])
            if xs:
                ax.plot(xs, ys, marker="o", label=c)
        ax.axhline(1.0, color="black", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{m}, batch 32")
        ax.set_xlabel("context (tokens)")
    axes[0].set_ylabel("speed vs PyTorch SDPA (×, higher is faster)")
    axes[-1].legend(fontsize=8)
    fig.suptitle(f"kvcar decode attention vs SDPA — {gpu_line.split(',')[0]}, {date[:10]}")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "speed.png"), dpi=110)


if __name__ == "__main__":
    main()
