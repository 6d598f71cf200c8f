#!/usr/bin/env python3
"""Writes the exactness fixtures of kvcar's reference models (tests/models/{gpt2,llama}_model.cpp).

For each tiny checkpoint in shared/data/models, Hugging Face transformers runs the model in
float32 on a fixed prompt (the GPT-2 BPE ids of PROMPT) and the fixture records:
  ids          the prompt's token ids
  top5         for every position, the 5 largest logits as [[id, logit], ...]
  last_logits  every logit of the last position, rounded to 5 decimals
Each fixture stays well under 1 MB. The C++ models must match these to 1e-3 relative.

Usage: python3 tools/make_model_fixtures.py [--data ../shared/data] [--out tests/fixtures]
"""
import argparse
import json
import os

import torch
from transformers import AutoModelForCausalLM, GPT2Tokenizer

PROMPT = "The quick brown fox jumps over the lazy dog."
HERE = os.path.dirname(os.path.abspath(__file__))


def fixture(model_dir, ids):
    # eager attention: the plain softmax(QK^T)V path, no fused kernel with its own rounding.
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()  # [n][vocab]
    top = torch.topk(logits, 5, dim=-1)
    return {
        "model": os.path.basename(os.path.normpath(model_dir)),
        "prompt": PROMPT,
        "ids": ids,
        "top5": [[[int(i), round(float(v), 5)] for i, v in zip(ti, tv)]
                 for ti, tv in zip(top.indices.tolist(), top.values.tolist())],
        "last_logits": [round(float(v), 5) for v in logits[-1].tolist()],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data"))
    ap.add_argument("--out", default=os.path.join(HERE, "..", "tests", "fixtures"))
    args = ap.parse_args()

    tok_dir = os.path.join(args.data, "tokenizers", "gpt2")
    tok = GPT2Tokenizer(os.path.join(tok_dir, "vocab.json"), os.path.join(tok_dir, "merges.txt"))
    ids = tok.encode(PROMPT)
    torch.manual_seed(0)
    for name, model in (("gpt2_tiny_logits.json", "gpt2-tiny"),
                        ("llama_tiny_logits.json", "llama-tiny")):
        fx = fixture(os.path.join(args.data, "models", model), ids)
        path = os.path.join(args.out, name)
        with open(path, "w") as f:
            json.dump(fx, f, separators=(",", ":"))
            f.write("\n")
        print(f"{path}: {len(ids)} ids, {os.path.getsize(path)} bytes, "
              f"top-1 of last position {fx['top5'][-1][0]}")


if __name__ == "__main__":
    main()
