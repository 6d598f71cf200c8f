#!/usr/bin/env python3
"""Write tests/fixtures/gpt2_tokens.json: GPT-2 token ids from an independent reference, Hugging
Face `tokenizers` (ByteLevelBPETokenizer on shared/data/tokenizers/gpt2/{vocab.json, merges.txt},
add_prefix_space=False), for tests/tokenizers/gpt2_tokenizer.cpp to compare against exactly.

Contents:
  strings     ~40 tricky strings with their ids (contractions, whitespace runs, scripts, emoji...)
  wiki_lines  ids of each of the first 300 lines of wikitext-2/wiki.test.raw, each line encoded
              on its own with its trailing "\\n" (the text is not stored: the test reads the file)
  wiki_whole  for the whole wiki.test.raw encoded as one string: its byte count, the number of
              ids and the 64-bit FNV-1a hash of the ids written as little-endian int32 bytes

Invalid UTF-8 is not representable in HF's API (Rust strings), so the test covers it with
round trips instead.

Usage: python3 tools/make_tokenizer_fixtures.py [shared data dir] [output path]
"""
import json
import struct
import sys
from pathlib import Path

import tokenizers
from tokenizers import ByteLevelBPETokenizer

ROOT = Path(__file__).resolve().parent.parent
WIKI_LINES = 300

STRINGS = [
    "Hello world",
    "Hello, world! How's it going?",
    "I'm sure they've said we'll see what you'd do; it's John's, isn't it?",
    "IT'S JOHN'S, ISN'T IT? I'M",          # upper-case contractions are not contractions
    "'s 't 're 've 'm 'll 'd 'x ''s",
    "don't\n'tis rock'n'roll",
    "a  b   c    d",                       # space runs: the last space joins the next word
    "trailing spaces   ",
    "   leading spaces",
    "tab\tseparated\t\tvalues",
    "line one\nline two\n\nline four\n",
    "  \n\n  x",
    " \n \n",
    "\n",
    " ",
    "x\r\ny",
    "mixed 123abc abc123 1,234.56 3.14159 2024-01-01",
    "version 2.0.1-rc3 costs $4.99 (20% off!)",
    "9999999999 12345678901234567890",
    "日本語のテキストと漢字、かな。",
    "中文文本测试，你好世界！",
    "한국어 텍스트",
    "emoji 😀👍🏽 family 👨‍👩‍👧 flags 🇫🇷🇩🇪",
    "combining: e\u0301 a\u0300 n\u0303 (decomposed) vs é à ñ (precomposed)",
    "Arabic: مرحبا بالعالم",
    "Hebrew: שלום עולם",
    "Devanagari: नमस्ते दुनिया",
    "accents: café naïve façade Ångström Øresund Łódź",
    "Ελληνικά και Русский текст",
    "non\u00a0breaking\u00a0space and\u2003em space and\u3000ideographic",
    "zero\u200bwidth\u200cjoiners\u200d",
    "symbols: © ® ™ € £ ¥ § ¶ • … — – « » ¿ ¡",
    "math: ∑ ∫ √ ∞ ≤ ≥ ≠ ± × ÷ ½ ² ³ Ⅻ",
    "superscripts x² and fractions ¾ and roman Ⅷ and circled ①",
    "<|endoftext|> is just text here",
    "URL https://example.com/path?q=1&r=two#frag",
    "code: if (x != y) { return a->b[i] * 2; }",
    "   ",
    "!!!???...,,,;;;",
    "A'B 'S ' s",
    "\u2028line separator\u2029paragraph\u0085nel",
    "soft\u00adhyphen",
    "",
]


def fnv1a64(ids):
    h = 0xCBF29CE484222325
    for b in struct.pack(f"<{len(ids)}i", *ids):
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def main():
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data"
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else \
        ROOT / "tests" / "fixtures" / "gpt2_tokens.json"
    gpt2 = data / "tokenizers" / "gpt2"
    tok = ByteLevelBPETokenizer(str(gpt2 / "vocab.json"), str(gpt2 / "merges.txt"),
                                add_prefix_space=False)
    encode = lambda s: tok.encode(s).ids

    strings = [{"text": s, "ids": encode(s)} for s in STRINGS]
    for s in strings:  # HF itself must round-trip these, or the fixture is wrong
        assert tok.decode(s["ids"]) == s["text"], s["text"]

    raw = (data / "wikitext-2" / "wiki.test.raw").read_bytes()
    text = raw.decode("utf-8")
    lines = text.splitlines(keepends=True)[:WIKI_LINES]
    # splitlines also splits on \r, \x0b, \u2028...; the test splits on "\n" only, so check.
    assert all(l.endswith("\n") and "\n" not in l[:-1] for l in lines)
    assert "".join(lines) == "\n".join(text.split("\n")[:WIKI_LINES]) + "\n"
    whole = encode(text)

    fixture = {
        "generator": "tools/make_tokenizer_fixtures.py",
        "reference": f"huggingface tokenizers {tokenizers.__version__}, ByteLevelBPETokenizer, "
                     "add_prefix_space=False",
        "strings": strings,
        "wiki_lines": [encode(l) for l in lines],
        "wiki_whole": {
            "bytes": len(raw),
            "ids": len(whole),
            "fnv1a64": f"{fnv1a64(whole):016x}",
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    # One string or id list per line: small, and diffs stay readable.
    with out.open("w", encoding="utf-8") as f:
        f.write("{\n")
        f.write(f'  "generator": {json.dumps(fixture["generator"])},\n')
        f.write(f'  "reference": {json.dumps(fixture["reference"])},\n')
        f.write('  "strings": [\n')
        compact = lambda v: json.dumps(v, separators=(",", ":"))
        f.write(",\n".join(f'    {{"text": {json.dumps(s["text"])}, "ids": {compact(s["ids"])}}}'
                           for s in strings))
        f.write("\n  ],\n")
        f.write('  "wiki_lines": [\n')
        f.write(",\n".join(f"    {compact(ids)}" for ids in fixture["wiki_lines"]))
        f.write("\n  ],\n")
        f.write(f'  "wiki_whole": {json.dumps(fixture["wiki_whole"])}\n')
        f.write("}\n")
    json.loads(out.read_text(encoding="utf-8"))  # well-formed
    print(f"wrote {out} ({out.stat().st_size} bytes): {len(strings)} strings, {len(lines)} lines, "
          f"whole file {len(whole)} ids, fnv1a64 {fnv1a64(whole):016x}")


if __name__ == "__main__":
    main()
