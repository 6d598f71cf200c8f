#!/usr/bin/env python3
"""Write tests/fixtures/hf_split_bytelevel_tokens.json: ids from Hugging Face `tokenizers` for a
Llama 3 style tokenizer.json, a BPE with pre_tokenizer Sequence[Split(Llama 3's regex, Isolated),
ByteLevel(use_regex=False)] and ignore_merges, built on GPT-2's vocab.json + merges.txt
(shared/data/tokenizers/gpt2, MIT), so no Llama 3 vocabulary is needed. The texts are those of
tests/fixtures/sentencepiece_tokens.json (tools/make_sentencepiece_fixtures.py); the C++ test
(tests/tokenizers/hf_tokenizer.cpp) builds the same tokenizer.json in memory.

Usage: python3 tools/make_hf_tokenizer_fixtures.py [shared data dir] [output path]
"""
import json
import sys
from pathlib import Path

import tokenizers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from make_sentencepiece_fixtures import HAND_WRITTEN, RANDOM_TEXTS, random_texts  # noqa: E402

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

EXTRA = [
    "IT'S JOHN'S, ISN'T IT? I'M We'Re They'VE",
    "1234567 12 123 1234 a1b22c333d4444",
    "x\r\n\r\n  y \n\n\t z\n",
    "  \n  \n",
    "hello\n\n\nworld   \n",
    "!!!\n\n...\r\n",
    "$x=1;\n\tif(a){b}\n",
]


def main():
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data"
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else \
        ROOT / "tests" / "fixtures" / "hf_split_bytelevel_tokens.json"
    gpt2 = data / "tokenizers" / "gpt2"
    bpe = models.BPE.from_file(str(gpt2 / "vocab.json"), str(gpt2 / "merges.txt"), ignore_merges=True)
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    saved = json.loads(tok.to_str())
    texts = HAND_WRITTEN + random_texts(RANDOM_TEXTS) + EXTRA
    cases = []
    for t in texts:
        ids = tok.encode(t).ids
        assert tok.decode(ids) == t, t
        cases.append({"text": t, "ids": ids})
    compact = lambda v: json.dumps(v, separators=(",", ":"))
    with out.open("w", encoding="utf-8") as f:
        f.write("{\n")
        f.write('  "generator": "tools/make_hf_tokenizer_fixtures.py",\n')
        f.write(f'  "reference": "huggingface tokenizers {tokenizers.__version__}",\n')
        f.write(f'  "pre_tokenizer": {json.dumps(saved["pre_tokenizer"])},\n')
        f.write(f'  "ignore_merges": {json.dumps(saved["model"]["ignore_merges"])},\n')
        f.write('  "cases": [\n')
        f.write(",\n".join(f'    {{"text": {json.dumps(c["text"])}, "ids": {compact(c["ids"])}}}'
                           for c in cases))
        f.write("\n  ]\n}\n")
    json.loads(out.read_text(encoding="utf-8"))
    print(f"wrote {out} ({out.stat().st_size} bytes): {len(cases)} texts")


if __name__ == "__main__":
    main()
