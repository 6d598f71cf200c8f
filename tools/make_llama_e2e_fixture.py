#!/usr/bin/env python3
"""Write a small random Llama (vocabulary 32000, the Llama 2 tokenizer) as a Hugging Face folder,
run transformers' greedy generation on a few text prompts, and store the ids as a fixture that
tests/tokenizers/llama_e2e.cpp compares with kvcar's CPU model, token for token.

The weights come from a counter-based generator that the C++ test re-implements (so no weights are
stored): for the tensor named N, element i (row-major) is made from
    x = splitmix64(fnv1a64(N) ^ seed + i) >> 40                     (24 random bits)
    matrices:   (x - 2**23) * 2**-23 * scale                         (uniform in [-scale, scale))
    norms:      0.5 + (x >> 1) * 2**-24                              (uniform in [0.5, 1))
with scale a power of two, so every value is exact in float32. splitmix64 and fnv1a64 are the
usual ones (see weights() below).

Output folder: config.json, generation_config.json, model.safetensors (F32; --dtype bf16 for a
folder to measure with), tokenizer.model (a copy of the one given), tokenizer_config.json.
Fixture (--fixture, default tests/fixtures/llama_e2e.json): the config, the seed, and per prompt
its text, transformers' prompt ids (with BOS), the greedy ids after it, the top-5 logits of the
first generated position, and the smallest gap between the best and second-best logit seen.

Usage (needs numpy, safetensors, torch and transformers; the text prompts are tokenized with
sentencepiece when it is installed, else with the ids built into this script, which are
sentencepiece's, and the fixture says which):
    python3 tools/make_llama_e2e_fixture.py --out /tmp/llama-e2e \\
        --tokenizer ../shared/data/tokenizers/llama2/tokenizer.model
The TinyLlama-1.1B shape for speed measurements (random weights, bf16, no fixture):
    python3 tools/make_llama_e2e_fixture.py --out /tmp/tinyllama-shape --shape tinyllama \\
        --dtype bf16 --tokenizer ... --no-fixture
"""
import argparse
import json
import shutil
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

SHAPES = {
    # tiny: GQA (4 query heads, 2 KV heads), untied head, like TinyLlama in miniature
    "tiny": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256),
    "tinyllama": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                      num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048),
}

# Scale of each matrix kind: a power of two (see the module comment).
SCALES = {"embed_tokens": 1.0, "lm_head": 0.5, "mlp.down_proj": 2.0 ** -4}
DEFAULT_SCALE = 2.0 ** -3

PROMPTS = [
    "Hello world",
    "The history of the Roman Empire",
    "Once upon a time, there was a little llama 🦙 named",
    "1 + 1 = 2, 2 + 2 =",
    "naïve café au lait\n\tand",
]
# sentencepiece 0.2.3 ids of PROMPTS with BOS (the Llama 2 tokenizer), for machines without
# sentencepiece; the C++ test checks that its tokenizer gives these too.
BUILTIN_PROMPT_IDS = [
    [1, 15043, 3186],
    [1, 450, 4955, 310, 278, 5917, 13378],
    [1, 9038, 2501, 263, 931, 29892, 727, 471, 263, 2217, 11148, 3304, 29871, 243, 162, 169, 156, 4257],
    [1, 29871, 29896, 718, 29871, 29896, 353, 29871, 29906, 29892, 29871, 29906, 718, 29871, 29906, 353],
    [1, 1055, 30085, 345, 274, 28059, 782, 425, 277, 13, 12, 392],
]

M64 = (1 << 64) - 1


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & M64
    return h


def splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def weights(name: str, shape, seed: int) -> np.ndarray:
    n = int(np.prod(shape))
    base = np.uint64(fnv1a64(name.encode()) ^ seed)
    with np.errstate(over="ignore"):
        x = splitmix64(base + np.arange(n, dtype=np.uint64)) >> np.uint64(40)
    if name.endswith("norm.weight"):
        w = 0.5 + (x >> np.uint64(1)).astype(np.float64) * 2.0 ** -24
    else:
        scale = next((s for k, s in SCALES.items() if k in name), DEFAULT_SCALE)
        w = (x.astype(np.float64) - 2.0 ** 23) * 2.0 ** -23 * scale
    return w.astype(np.float32).reshape(shape)


def tensor_shapes(c):
    d, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    hd = d // c["num_attention_heads"]
    kv = c["num_key_value_heads"] * hd
    shapes = {"model.embed_tokens.weight": (v, d)}
    for layer in range(c["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        shapes.update({
            p + "input_layernorm.weight": (d,),
            p + "self_attn.q_proj.weight": (d, d),
            p + "self_attn.k_proj.weight": (kv, d),
            p + "self_attn.v_proj.weight": (kv, d),
            p + "self_attn.o_proj.weight": (d, d),
            p + "post_attention_layernorm.weight": (d,),
            p + "mlp.gate_proj.weight": (f, d),
            p + "mlp.up_proj.weight": (f, d),
            p + "mlp.down_proj.weight": (d, f),
        })
    shapes["model.norm.weight"] = (d,)
    shapes["lm_head.weight"] = (v, d)
    return shapes


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder to write the model into")
    ap.add_argument("--tokenizer", default=str(ROOT.parent / "shared/data/tokenizers/llama2/tokenizer.model"),
                    help="the Llama 2 tokenizer.model to copy into the folder (if absent: no copy, "
                         "built-in prompt ids)")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--seed", type=int, default=20261204)
    ap.add_argument("--steps", type=int, default=24, help="greedy tokens per prompt")
    ap.add_argument("--device", default="cpu", help="torch device for transformers (cpu is exact fp32)")
    ap.add_argument("--fixture", default=str(ROOT / "tests/fixtures/llama_e2e.json"))
    ap.add_argument("--tokenizer-is-not-llama2", dest="tokenizer_is_llama2", action="store_false",
                    help="skip the check of sentencepiece's ids against the built-in Llama 2 ids")
    ap.add_argument("--no-fixture", action="store_true", help="write the folder only")
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = dict(
        architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=32000,
        hidden_act="silu", rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
        attention_bias=False, mlp_bias=False, bos_token_id=1, eos_token_id=2,
        torch_dtype="float32" if args.dtype == "f32" else "bfloat16", **SHAPES[args.shape])
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": 2, "do_sample": False}, indent=2) + "\n")
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
         "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "legacy": True}, indent=2) + "\n")
    have_tokenizer = Path(args.tokenizer).is_file()
    if have_tokenizer:
        shutil.copyfile(args.tokenizer, out / "tokenizer.model")
    else:  # the weights and transformers' ids do not need it; the prompts use the built-in ids
        print(f"note: no tokenizer at {args.tokenizer}; the folder has none and the prompts are "
              f"the built-in ids")

    shapes = tensor_shapes(config)
    if args.dtype == "f32":  # numpy only, so the folder can be written without torch
        from safetensors.numpy import save_file
        save_file({name: weights(name, shape, args.seed) for name, shape in shapes.items()},
                  str(out / "model.safetensors"), metadata={"format": "pt"})
    else:
        import torch
        from safetensors.torch import save_file
        save_file({name: torch.from_numpy(weights(name, shape, args.seed)).to(torch.bfloat16)
                   for name, shape in shapes.items()},
                  str(out / "model.safetensors"), metadata={"format": "pt"})
    print(f"wrote {out} ({args.shape}, {args.dtype}, seed {args.seed})")
    if args.no_fixture:
        return

    import torch
    from transformers import LlamaForCausalLM
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    # The prompt ids come from the reference encoder, sentencepiece, when it is installed (they
    # must then equal the ids built into this script), else from the built-in list.
    try:
        if not have_tokenizer:
            raise ImportError("no tokenizer.model given")
        import sentencepiece as spm
        sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
        prompt_ids = [[1] + sp.encode(p) for p in PROMPTS]
        if args.tokenizer_is_llama2:
            assert prompt_ids == builtin_prompt_ids(), "sentencepiece disagrees with the built-in ids"
        tokenizer_used = f"sentencepiece {spm.__version__}, BOS in front (as LlamaTokenizer)"
    except ImportError:
        prompt_ids = builtin_prompt_ids()
        tokenizer_used = "ids built into the script (sentencepiece 0.2.3, Llama 2 tokenizer.model)"

    try:  # transformers 5 names it dtype, 4.x torch_dtype
        model = LlamaForCausalLM.from_pretrained(str(out), dtype=torch.float32, attn_implementation="eager")
    except TypeError:
        model = LlamaForCausalLM.from_pretrained(str(out), torch_dtype=torch.float32,
                                                 attn_implementation="eager")
    model = model.to(args.device).eval()
    assert model.dtype == torch.float32
    cases = []
    for text, ids in zip(PROMPTS, prompt_ids):
        x = torch.tensor([ids], device=args.device)
        with torch.no_grad():
            g = model.generate(x, max_new_tokens=args.steps, do_sample=False, eos_token_id=2,
                               pad_token_id=0, output_scores=True, return_dict_in_generate=True)
        generated = g.sequences[0, len(ids):].tolist()
        scores = [s[0].float().cpu() for s in g.scores]
        gaps = [float(torch.topk(s, 2).values[0] - torch.topk(s, 2).values[1]) for s in scores]
        top = torch.topk(scores[0], 5)
        cases.append({"text": text, "prompt_ids": ids, "generated_ids": generated,
                      "first_top5": [[int(i), round(float(v), 6)] for v, i in zip(top.values, top.indices)],
                      "min_top2_gap": round(min(gaps), 6)})
        print(f"{text!r}: {len(ids)} prompt ids, {len(generated)} generated, "
              f"min top-2 gap {min(gaps):.4f}")

    import transformers
    fixture = {
        "generator": "tools/make_llama_e2e_fixture.py",
        "reference": f"transformers {transformers.__version__}, torch {torch.__version__}, "
                     f"float32 on {args.device}, eager attention, greedy",
        "tokenizer": tokenizer_used,
        "seed": args.seed, "shape": args.shape, "dtype": args.dtype, "config": config,
        "scales": {"default": DEFAULT_SCALE, **SCALES},
        "cases": cases,
    }
    Path(args.fixture).write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.fixture}")


def builtin_prompt_ids():
    assert len(BUILTIN_PROMPT_IDS) == len(PROMPTS)
    return BUILTIN_PROMPT_IDS


if __name__ == "__main__":
    main()
