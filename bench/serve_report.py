#!/usr/bin/env python3
"""Turns one run of bench/serve_bench.sh into docs/results/serving.md and serving.svg.

    python3 bench/serve_report.py DATA_DIR [--out docs/results] [--note TEXT]

DATA_DIR holds serve-<shape>.jsonl (one kvcar-serve --json line per codec and budget), gpu.txt,
date.txt and timing.txt from the same run on the same GPU. Every ratio compares numbers of that
one run. Each codec's quality cost is read from docs/results/quality.json (calibrated codecs of
the same kinds on the real tiny GPT-2 and Llama checkpoints): the serving runs use random
weights, whose speed is the real shape's but whose text is noise.
"""
import argparse
import glob
import json
import math
import os

# kvcar-serve --kv name (a codec file by its file name) -> label, and the quality-table run of
# the same kind of codec.
CODECS = [
    ("identity-f16", "fp16", "fp16"),
    ("int8", "int8 per head", "int8-head"),
    ("lin-d2.kvc", "linear d/2", "lin-layer-2"),
    ("lin-d4-int8.kvc", "linear d/4 + int8", "lin-layer-4-int8"),
    ("ae-d2.kvc", "autoencoder d/2", "ae-first6"),
]
COLORS = ["#333333", "#1f77b4", "#2ca02c", "#d62728", "#9467bd"]
GiB = 2.0**30


def size(gib):
    return f"{gib:.4g} GiB" if gib >= 1 else f"{gib * 1024:.4g} MiB"


def codec_of(kv):
    name = os.path.basename(kv[5:]) if kv.startswith("file:") else kv
    for i, (key, label, quality) in enumerate(CODECS):
        if name == key:
            return i
    return None


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def quality_cost(runs, model, key):
    r = runs.get(f"{model}/{key}")
    base = runs.get(f"{model}/fp16")
    try:
        return f"{100 * (r['perplexity']['ppl'] / base['perplexity']['ppl'] - 1):+.2f}%"
    except (TypeError, KeyError):
        return "n/a"


def svg_plot(panels, path):
    """panels: [(title, {codec index: [(budget GiB, tokens/s)]})] -> a line chart per panel."""
    w, h, left, top, pw, ph = 460, 330, 70, 40, 360, 230
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w * len(panels)}" height="{h + 30}" '
             'font-family="sans-serif" font-size="12">',
             f'<rect width="100%" height="100%" fill="white"/>']
    for p, (title, lines) in enumerate(panels):
        x0 = p * w + left
        xs = sorted({b for pts in lines.values() for b, _ in pts}) or [1]
        ymax = max([t for pts in lines.values() for _, t in pts] + [1]) * 1.1
        lx = [math.log2(b) for b in xs]
        span = (max(lx) - min(lx)) or 1
        X = lambda b: x0 + (math.log2(b) - min(lx)) / span * pw
        Y = lambda t: top + ph - t / ymax * ph
        parts.append(f'<text x="{x0 + pw / 2}" y="20" text-anchor="middle" font-weight="bold">'
                     f'{title}</text>')
        parts.append(f'<rect x="{x0}" y="{top}" width="{pw}" height="{ph}" fill="none" '
                     'stroke="#999"/>')
        for i in range(5):
            t = ymax * i / 4
            parts.append(f'<text x="{x0 - 6}" y="{Y(t) + 4}" text-anchor="end">{t:.0f}</text>')
        for b in xs:
            parts.append(f'<text x="{X(b)}" y="{top + ph + 16}" text-anchor="middle">'
                         f'{b:g} GiB</text>')
        parts.append(f'<text x="{x0 + pw / 2}" y="{top + ph + 34}" text-anchor="middle">'
                     'KV budget</text>')
        parts.append(f'<text x="{x0 - 50}" y="{top + ph / 2}" text-anchor="middle" '
                     f'transform="rotate(-90 {x0 - 50} {top + ph / 2})">generated tokens/s</text>')
        for n, (c, pts) in enumerate(sorted(lines.items())):
            pts = sorted(pts)
            d = " ".join(f"{X(b):.1f},{Y(t):.1f}" for b, t in pts)
            parts.append(f'<polyline points="{d}" fill="none" stroke="{COLORS[c]}" '
                         'stroke-width="2"/>')
            for b, t in pts:
                parts.append(f'<circle cx="{X(b):.1f}" cy="{Y(t):.1f}" r="3" fill="{COLORS[c]}"/>')
            parts.append(f'<text x="{x0 + 8}" y="{top + 16 + 15 * n}" fill="{COLORS[c]}">'
                         f'{CODECS[c][1]}</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")


def host_split(r):
    """The engine's host time, launch / wait, when the run reports it."""
    if "engine_enqueue_s" not in r:
        return "—"
    return f"{r['engine_enqueue_s']:.1f} / {r['engine_wait_s']:.1f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    read = lambda name: (open(os.path.join(args.data, name)).read().strip()
                         if os.path.exists(os.path.join(args.data, name)) else "")
    gpu = (read("gpu.txt").splitlines() or ["unknown GPU"])[-1]
    quality_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs",
                                "results", "quality.json")
    runs = json.load(open(quality_path))["runs"] if os.path.exists(quality_path) else {}

    md = ["# Serving throughput at a fixed KV memory budget", ""]
    if args.note:
        md += [args.note, ""]
    md += [f"GPU: {gpu}. Run {read('date.txt')}, commit {read('commit.txt') or '?'}; "
           "`bench/serve_bench.sh`, then `bench/serve_report.py`.", "",
           "Each run: `kvcar-serve --device cuda` over 1000 requests drawn from seed 0 (prompt "
           "lengths uniform in 512–4096, outputs in 128–512 tokens, all arriving at time 0), "
           "continuous batching with 2048 prefill tokens per step beside the decode tokens, at most "
           "256 sequences, pages of 16 tokens. The budget is bytes of cache records: a cache with "
           "fewer bytes per token gets more pages from it. A run serves the trace for a fixed "
           "window (`--max-seconds`) from a cold start, the same for every codec, and reports the "
           "generated tokens per second from the end of a warm-up (`--warmup`) to the end of the "
           "window (the `window` column, in seconds from the start).", "",
           "The checkpoints and codecs are random (`bench/make_random_serving.py`): a forward "
           "pass costs the same whatever the values, so the speed is the real shape's. The "
           "quality column is the perplexity cost of the same kind of codec, calibrated on the "
           "real tiny checkpoints (`quality.md`: Llama-tiny / GPT-2-tiny).", ""]
    results = {path: load(path)
               for path in sorted(glob.glob(os.path.join(args.data, "serve-*.jsonl")))}
    reserves = sorted({r.get("reserve_tokens", 0) for rows in results.values() for r in rows})
    md += ["Admission headroom (`--reserve-tokens`): " +
           ", ".join(f"{n} tokens" for n in reserves) +
           " (a request is admitted only if the free pages also hold that many more tokens of "
           "it and of every running sequence; 0 admits while its prompt fits). The `host` column "
           "is the CUDA engine's own account of the whole run: seconds building and launching "
           "passes, and seconds waiting for the GPU at their end.", ""]
    panels = []
    for path, loaded in results.items():
        shape = os.path.basename(path)[6:-6]
        rows = [r for r in loaded if codec_of(r["kv"]) is not None]
        if not rows:
            continue
        fp16 = {r["budget_bytes"]: r for r in rows if codec_of(r["kv"]) == 0}
        base_bpt = next((r["bytes_per_token"] for r in rows if codec_of(r["kv"]) == 0), None)
        md += [f"## {shape}", "",
               "| codec | bytes/token | vs fp16 | quality (Δ ppl) | budget | tokens/s | × fp16 | "
               "peak seqs | peak KV | TTFT p50 / p99 (s) | per token p50 / p99 (s) | "
               "preempted | finished | window (s) | host: launch / wait (s) |",
               "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
               "| ---: | ---: | ---: |"]
        lines = {}
        for r in sorted(rows, key=lambda r: (codec_of(r["kv"]), r["budget_bytes"])):
            c = codec_of(r["kv"])
            key, label, qkey = CODECS[c]
            base = fp16.get(r["budget_bytes"])
            ratio = (f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x"
                     if base and base["tokens_per_s"] > 0 else "")
            smaller = f"{base_bpt / r['bytes_per_token']:.2f}x smaller" if base_bpt else ""
            quality = (f"{quality_cost(runs, 'llama-tiny', qkey)} / "
                       f"{quality_cost(runs, 'gpt2-tiny', qkey)}")
            md.append(
                f"| {label} | {r['bytes_per_token']} | {smaller} | {quality} | "
                f"{size(r['budget_bytes'] / GiB)} | {r['tokens_per_s']:.0f} | {ratio} | "
                f"{r['peak_sequences']} | {size(r['peak_kv_bytes'] / GiB)} | "
                f"{r['ttft_p50_s']:.2f} / {r['ttft_p99_s']:.2f} | "
                f"{r['tpot_p50_s']:.3f} / {r['tpot_p99_s']:.3f} | {r['preemptions']} | "
                f"{r['finished']}/{r['requests']} | {r.get('warmup_s', 0):.1f}–{r['seconds']:.1f} | "
                f"{host_split(r)} |")
            lines.setdefault(c, []).append((r["budget_bytes"] / GiB, r["tokens_per_s"]))
        md.append("")
        panels.append((shape, lines))
    if not panels:
        raise SystemExit(f"no serve-*.jsonl results in {args.data}")
    os.makedirs(args.out, exist_ok=True)
    svg_plot(panels, os.path.join(args.out, "serving.svg"))
    md += ["![generated tokens/s against the KV budget, one line per codec](serving.svg)", ""]
    timing = read("timing.txt")
    if timing:
        md += ["Timeline of the run:", "", "```", timing, "```", ""]
    with open(os.path.join(args.out, "serving.md"), "w") as f:
        f.write("\n".join(md))
    print(f"wrote {os.path.join(args.out, 'serving.md')} and serving.svg")


if __name__ == "__main__":
    main()
