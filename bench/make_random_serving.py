#!/usr/bin/env python3
"""Writes a random bf16 Llama checkpoint of a real model's shape, and random codec files of the
kinds the serving benchmark compares, for kvcar-serve speed runs. numpy only (no PyTorch).

    python3 bench/make_random_serving.py OUT_DIR --shape tinyllama-1.1b|llama3-8b

OUT_DIR gets config.json + model.safetensors (bf16) and codecs/{lin-d2,lin-d4-int8,ae-d2}.kvc:
  lin-d2       linear d = D/2 per layer (one codec per layer's whole K or V), f16 latent
  lin-d4-int8  linear d = D/4 per layer, int8 latent (plus an f32 scale and offset per record)
  ae-d2        autoencoder d = D/2 per layer, hidden max(D, 2d), f16 latent

The weights are noise: a block of N(0, 0.02) bf16 values tiled over every matrix (norms 1), so a
16 GB checkpoint takes seconds to write. The text such a model writes is meaningless, but the
time a forward pass takes does not depend on the values of the weights or the codecs (same
shapes, same kernels, same bytes moved; no sparsity or early exit anywhere), so its throughput is
the real shape's. Quality numbers come from calibrated codecs on real models (quality.md).
"""
import argparse
import json
import os
import struct

import numpy as np

SHAPES = {
    # TinyLlama/TinyLlama-1.1B-Chat-v1.0 and meta-llama/Meta-Llama-3-8B config.json values.
    "tinyllama-1.1b": dict(hidden=2048, layers=22, heads=32, kv_heads=4, ffn=5632, vocab=32000,
                           rope_theta=10000.0),
    # A few-MB model of the same kind, to try the pipeline on the CPU.
    "test": dict(hidden=256, layers=2, heads=8, kv_heads=2, ffn=512, vocab=1000, rope_theta=10000.0),
    "llama3-8b": dict(hidden=4096, layers=32, heads=32, kv_heads=8, ffn=14336, vocab=128256,
                      rope_theta=500000.0),
}

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("out")
parser.add_argument("--shape", choices=sorted(SHAPES), required=True)
parser.add_argument("--context", type=int, default=8192)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
s = SHAPES[args.shape]
rng = np.random.default_rng(args.seed)
os.makedirs(os.path.join(args.out, "codecs"), exist_ok=True)


def write_safetensors(path, tensors, metadata=None):
    """tensors: [(name, dtype "BF16"|"F32", shape, fill(f) writing the bytes)], in file order."""
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape, _ in tensors:
        size = int(np.prod(shape)) * (2 if dtype == "BF16" else 4)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for _, _, _, fill in tensors:
            fill(f)
    os.replace(path + ".tmp", path)


# --- the checkpoint ---------------------------------------------------------------------------
block = rng.normal(0.0, 0.02, size=1 << 22).astype(np.float32)  # 4M values, 8 MB as bf16
block_bf16 = (block.view(np.uint32) >> 16).astype(np.uint16).tobytes()
one_bf16 = np.full(1, 1.0, dtype=np.float32).view(np.uint32) >> 16


def noise(count):
    def fill(f):
        left = count * 2
        while left > 0:
            n = min(left, len(block_bf16))
            f.write(block_bf16[:n])
            left -= n
    return fill


def ones(count):
    data = np.full(count, one_bf16[0], dtype=np.uint16).tobytes()
    return lambda f: f.write(data)


D, L, H, KVH, F, V = s["hidden"], s["layers"], s["heads"], s["kv_heads"], s["ffn"], s["vocab"]
hd = D // H
tensors = [("model.embed_tokens.weight", "BF16", (V, D), noise(V * D))]
for l in range(L):
    p = f"model.layers.{l}."
    for name, shape in [("self_attn.q_proj.weight", (H * hd, D)), ("self_attn.k_proj.weight", (KVH * hd, D)),
                        ("self_attn.v_proj.weight", (KVH * hd, D)), ("self_attn.o_proj.weight", (D, H * hd)),
                        ("mlp.gate_proj.weight", (F, D)), ("mlp.up_proj.weight", (F, D)),
                        ("mlp.down_proj.weight", (D, F))]:
        tensors.append((p + name, "BF16", shape, noise(shape[0] * shape[1])))
    tensors.append((p + "input_layernorm.weight", "BF16", (D,), ones(D)))
    tensors.append((p + "post_attention_layernorm.weight", "BF16", (D,), ones(D)))
tensors.append(("model.norm.weight", "BF16", (D,), ones(D)))
tensors.append(("lm_head.weight", "BF16", (V, D), noise(V * D)))
write_safetensors(os.path.join(args.out, "model.safetensors"), tensors, {"format": "pt"})
config = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": D,
    "intermediate_size": F, "num_hidden_layers": L, "num_attention_heads": H,
    "num_key_value_heads": KVH, "vocab_size": V, "max_position_embeddings": args.context,
    "rms_norm_eps": 1e-5, "rope_theta": s["rope_theta"], "hidden_act": "silu",
    "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "kvcar_note": f"random weights of {args.shape}'s shape (bench/make_random_serving.py)",
}
with open(os.path.join(args.out, "config.json"), "w") as f:
    json.dump(config, f, indent=1)

# --- the codec files (docs/codec_file.md): one codec per layer's K and per layer's V ----------
W = KVH * hd  # group width: a layer's whole K (or V) vector


def f32(a):
    a = np.ascontiguousarray(a, dtype=np.float32)
    return a.shape, lambda f: f.write(a.tobytes())


def codec_file(path, kind, latent, storage, hidden=0):
    slots, tensors = [], []
    for l in range(L):
        for kv in ("K", "V"):
            slot = {"layer": l, "group": 0, "kind": kv, "codec": kind, "width": W, "latent": latent,
                    "storage": storage}
            name = f"L{l}.G0.{kv}."
            if kind == "linear":
                slot["heads"] = KVH
                q = rng.normal(0, 1 / np.sqrt(W), size=(W, latent))  # near-orthonormal columns
                parts = [("mean", np.zeros(W)), ("basis", q)]
            else:
                slot.update(hidden=hidden, slope=0.01)
                g = lambda *shape: rng.normal(0, 1 / np.sqrt(shape[-1]), size=shape)
                parts = [("enc1_w", g(hidden, W)), ("enc1_b", np.zeros(hidden)),
                         ("enc2_wt", g(hidden, latent)), ("enc2_b", np.zeros(latent)),
                         ("dec1_w", g(hidden, latent)), ("dec1_b", np.zeros(hidden)),
                         ("dec2_wt", g(hidden, W)), ("dec2_b", np.zeros(W))]
            slots.append(slot)
            for n, a in parts:
                shape, fill = f32(a)
                tensors.append((name + n, "F32", shape, fill))
    doc = {"format": "kvcar-codec", "version": 1,
           "model": {"architecture": "llama", "n_layers": L, "n_kv_heads": KVH, "head_dim": hd,
                     "name": f"random {args.shape}"},
           "heads_per_group": KVH, "key_reuse": [], "value_reuse": [], "slots": slots,
           "calibration": {"text": "none", "tokens": 0,
                           "notes": "random parameters, for speed runs only"}}
    write_safetensors(path, tensors, {"kvcar": json.dumps(doc)})


codecs = os.path.join(args.out, "codecs")
codec_file(os.path.join(codecs, "lin-d2.kvc"), "linear", W // 2, "f16")
codec_file(os.path.join(codecs, "lin-d4-int8.kvc"), "linear", W // 4, "int8")
codec_file(os.path.join(codecs, "ae-d2.kvc"), "autoencoder", W // 2, "f16", hidden=max(W, 2 * (W // 2)))
params = V * D * 2 + L * (D * (H * hd) * 2 + D * KVH * hd * 2 + 3 * D * F + 2 * D) + D
print(f"{args.out}: random {args.shape}, {params / 1e9:.2f}B parameters (bf16), {L} layers, "
      f"{H} heads, {KVH} KV heads of {hd}, vocab {V}; codecs in {codecs}")
