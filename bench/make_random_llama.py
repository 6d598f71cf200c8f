#!/usr/bin/env python3
"""Writes a randomly initialised Llama checkpoint (config.json + model.safetensors, fp32) for
speed runs where the tiny checkpoints are too small to measure anything but launch overhead.
Its weights are Hugging Face's own initialisation under a fixed seed: the text it writes is
noise, its shapes and arithmetic are a real Llama's. Runs where PyTorch and transformers are.

    python3 bench/make_random_llama.py OUT_DIR [--layers 16 --hidden 2048 --heads 32 --kv-heads 8]
"""
import argparse

import torch
import transformers

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("out")
parser.add_argument("--layers", type=int, default=16)
parser.add_argument("--hidden", type=int, default=2048)
parser.add_argument("--heads", type=int, default=32)
parser.add_argument("--kv-heads", type=int, default=8)
parser.add_argument("--ffn", type=int, default=5632)
parser.add_argument("--vocab", type=int, default=50257)  # the GPT-2 tokenizer kvcar ships
parser.add_argument("--context", type=int, default=2048)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

torch.manual_seed(args.seed)
config = transformers.LlamaConfig(
    vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.ffn,
    num_hidden_layers=args.layers, num_attention_heads=args.heads,
    num_key_value_heads=args.kv_heads, max_position_embeddings=args.context,
    tie_word_embeddings=True, bos_token_id=50256, eos_token_id=50256)
with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
    model = transformers.LlamaForCausalLM(config).to(torch.float32)
model.save_pretrained(args.out, safe_serialization=True)
params = sum(p.numel() for p in model.parameters())
print(f"{args.out}: {params / 1e6:.0f}M parameters, {args.layers} layers, {args.heads} heads, "
      f"{args.kv_heads} KV heads, hidden {args.hidden}")
