#!/usr/bin/env python3
"""Write tests/fixtures/sentencepiece_tokens.json: Llama 2 token ids of a few hundred texts from the
reference encoder, `sentencepiece` (PyPI), on shared/data/tokenizers/llama2/tokenizer.model, for
tests/tokenizers/sentencepiece.cpp to compare against exactly. When the `tokenizers` package and
`transformers` (for its slow->fast converter) are installed, the same texts are also encoded by
Hugging Face `tokenizers` on the tokenizer.json that transformers' LlamaConverter makes from the
same tokenizer.model (the Metaspace + byte-fallback kind), for tests/tokenizers/hf_tokenizer.cpp.

Only ids are stored (and the texts, which are ours): nothing of the Meta vocabulary. The
converted tokenizer.json is not stored; the C++ test rebuilds it from tokenizer.model.

Contents:
  texts       the texts: hand-written cases (whitespace, digits, punctuation, accents, CJK, emoji,
              bytes that need the fallback, rare code points) and seeded random mixtures of them
  cases       per text: "ids" (sentencepiece encode, no BOS), "decoded" when sp.decode(ids)
              differs from the text, "hf_ids" when the HF ids differ from "ids", and
              "hf_decoded" when HF's decode differs from sentencepiece's
  wiki_lines  ids of the first lines of wikitext-2/wiki.test.raw, each line encoded on its own
              without its "\\n" (the text is not stored: the test reads the file)
  wiki_whole  the whole wiki.test.raw encoded as one text: its byte count, the number of ids and
              the 64-bit FNV-1a hash of the ids as little-endian int32 bytes

Usage: python3 tools/make_sentencepiece_fixtures.py [shared data dir] [output path]
"""
import hashlib
import json
import random
import sys
from pathlib import Path

import sentencepiece as spm

ROOT = Path(__file__).resolve().parent.parent
WIKI_LINES = 200
RANDOM_TEXTS = 160

HAND_WRITTEN = [
    "Hello world",
    "Hello, world! How's it going?",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure they've said we'll see what you'd do; it's John's, isn't it?",
    " leading space",
    "  two leading spaces",
    "trailing space ",
    "trailing spaces   ",
    "a  b   c    d     e",
    "   ",
    " ",
    "",
    "\n",
    "\n\n",
    "line one\nline two\n\nline four\n",
    " \n \n ",
    "tab\tseparated\t\tvalues\t",
    "\t leading tab",
    "carriage\r\nreturn",
    "mixed 123abc abc123 1,234.56 3.14159 2024-01-01",
    "9999999999 12345678901234567890",
    "0 1 2 3 4 5 6 7 8 9 10 11 100 1000",
    "version 2.0.1-rc3 costs $4.99 (20% off!)",
    "!!!???...,,,;;;:::",
    "--- *** ### @@@ &&& ||| ~~~ ^^^ ```",
    "((([[[{{{<<<>>>}}}]]])))",
    "code: if (x != y) { return a->b[i] * 2; } // done",
    "def f(x):\n    return x ** 2\n",
    "URL https://example.com/path?q=1&r=two#frag",
    "email someone@example.org, phone +1 (555) 010-9999",
    "accents: café naïve façade Ångström Øresund Łódź São Paulo",
    "combining: e\u0301 a\u0300 n\u0303 (decomposed) vs é à ñ (precomposed)",
    "Ελληνικά και Русский текст",
    "日本語のテキストと漢字、かな。",
    "中文文本测试，你好世界！",
    "한국어 텍스트",
    "Arabic: مرحبا بالعالم",
    "Hebrew: שלום עולם",
    "Devanagari: नमस्ते दुनिया",
    "Thai: สวัสดีชาวโลก",
    "Georgian: გამარჯობა",
    "emoji 😀👍🏽 family 👨\u200d👩\u200d👧 flags 🇫🇷🇩🇪",
    "🦙🦙🦙 llamas",
    "non\u00a0breaking\u00a0space and\u2003em space and\u3000ideographic",
    "zero\u200bwidth\u200cjoiners\u200d",
    "symbols: © ® ™ € £ ¥ § ¶ • … — – « » ¿ ¡",
    "math: ∑ ∫ √ ∞ ≤ ≥ ≠ ± × ÷ ½ ² ³ Ⅻ",
    "𝐁𝐨𝐥𝐝 𝑖𝑡𝑎𝑙𝑖𝑐 𝔉𝔯𝔞𝔨𝔱𝔲𝔯",
    "private use \ue000\uf8ff and plane 15 \U000f0000",
    "rare: \u0e3f \u16a0\u16a1 \u2c00 \ua000 \U00010000 \U0001f9ff \U0010fffd",
    "control chars \x01\x02\x1b[0m \x7f end",
    "form\x0cfeed vertical\x0btab",
    "\u2028line separator\u2029paragraph\u0085nel",
    "soft\u00adhyphen",
    "▁ a literal lower one eighth block ▁▁",
    "<s> </s> <unk> are plain text here",
    "<0x41> looks like a byte piece",
    "ALL CAPS SENTENCE WITH NUMBERS 42",
    "MiXeD cAsE wOrDs",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "ababababababababababababab",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "x",
    "é",
    "中",
    "😀",
    "\u0301",
    "Once upon a time, there was a little girl named Lily.",
    "The history of the Roman Empire spans more than a thousand years.",
]

# Random texts mix pieces of these pools with seeded choices, so the set is reproducible.
POOLS = {
    "words": ["the", "of", "and", "token", "cache", "Llama", "model", "tensor", "GPU", "kv",
              "compression", "attention", "hello", "world", "naïve", "Zürich", "x", "I", "a"],
    "space": [" ", "  ", "   ", "\t", "\n", "\n\n", " \n", "\u3000", "\u00a0"],
    "digits": ["0", "7", "42", "123", "2024", "3.14", "1,000", "007", "99999"],
    "punct": [".", ",", "!", "?", "...", "--", ";", ":", "'", '"', "(", ")", "[", "]", "-", "/",
              "\\", "@", "#", "$", "%", "&", "*", "+", "=", "<", ">", "|", "~", "`", "^", "_"],
    "accents": ["é", "à", "ñ", "ü", "ø", "Å", "ç", "ß", "œ", "ę", "ł", "ő", "e\u0301"],
    "cjk": ["日本", "語", "漢字", "かな", "カタカナ", "中文", "你好", "世界", "한국어", "글"],
    "emoji": ["😀", "👍🏽", "🦙", "🚀", "❤️", "👨\u200d👩\u200d👧", "🇫🇷", "🤖", "🎉"],
    "rare": ["\U0001d400", "\u16a0", "\u2c00", "\ua000", "\U00010000", "\ue000", "\u0f00",
             "\u1200", "\u13a0", "\U0001f9ff", "\u0e3f", "\u2603", "\u00b5", "\u212b"],
    "controls": ["\x01", "\x1b", "\x7f", "\x0c", "\r"],
}


def random_texts(n, seed=20261204):
    rng = random.Random(seed)
    names = sorted(POOLS)
    texts = []
    for _ in range(n):
        weights = [rng.random() for _ in names]
        parts = []
        for _ in range(rng.randint(1, 14)):
            pool = rng.choices(names, weights=weights)[0]
            parts.append(rng.choice(POOLS[pool]))
            if rng.random() < 0.5:
                parts.append(" ")
        texts.append("".join(parts))
    return texts


hf_merges = {}


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def hf_reference(model_path):
    """(encode, decode, description) of HF `tokenizers` on transformers' conversion, or None."""
    try:
        import tokenizers
        from transformers import LlamaTokenizer
        from transformers.convert_slow_tokenizer import LlamaConverter
        import transformers
    except ImportError as e:
        print(f"skipping the tokenizers reference: {e}")
        return None
    slow = LlamaTokenizer(vocab_file=str(model_path), legacy=True)
    fast = LlamaConverter(slow).converted()
    # The merges the converter derived, as "a b\n" lines: the C++ test derives them too.
    merges = json.loads(fast.to_str())["model"]["merges"]
    joined = "".join(f"{a} {b}\n" for a, b in merges).encode("utf-8")
    hf_merges.update(count=len(merges), fnv1a64=f"{fnv1a64(joined):016x}")
    return (lambda s: fast.encode(s, add_special_tokens=False).ids,
            lambda ids: fast.decode(ids, skip_special_tokens=False),
            f"huggingface tokenizers {tokenizers.__version__} on transformers "
            f"{transformers.__version__} LlamaConverter(LlamaTokenizer(legacy=True))")


def main():
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data"
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else \
        ROOT / "tests" / "fixtures" / "sentencepiece_tokens.json"
    model_path = data / "tokenizers" / "llama2" / "tokenizer.model"
    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    hf = hf_reference(model_path)

    texts = HAND_WRITTEN + random_texts(RANDOM_TEXTS)
    cases = []
    for t in texts:
        ids = sp.encode(t)
        case = {"ids": ids}
        decoded = sp.decode(ids)
        if decoded != t:
            case["decoded"] = decoded
        if hf:
            hf_ids = hf[0](t)
            if hf_ids != ids:
                case["hf_ids"] = hf_ids
            hf_decoded = hf[1](hf_ids)
            if hf_decoded != decoded:
                case["hf_decoded"] = hf_decoded
        cases.append(case)

    raw = (data / "wikitext-2" / "wiki.test.raw").read_bytes().decode("utf-8")
    whole = sp.encode(raw)  # the whole file as one text: one long BPE run
    if hf:
        assert hf[0](raw) == whole
    lines = raw.split("\n")[:WIKI_LINES]
    wiki = []
    for line in lines:
        ids = sp.encode(line)
        if hf:
            assert hf[0](line) == ids, line  # recorded once; a difference would need its own field
        wiki.append(ids)

    compact = lambda v: json.dumps(v, ensure_ascii=False, separators=(",", ":"))
    with out.open("w", encoding="utf-8") as f:
        f.write("{\n")
        f.write(f'  "generator": "tools/make_sentencepiece_fixtures.py",\n')
        f.write(f'  "reference": {json.dumps(f"sentencepiece {spm.__version__}")},\n')
        f.write(f'  "hf_reference": {json.dumps(hf[2] if hf else None)},\n')
        f.write(f'  "hf_merges": {json.dumps(hf_merges or None)},\n')
        f.write(f'  "model_sha256": '
                f'"{hashlib.sha256(model_path.read_bytes()).hexdigest()}",\n')
        f.write('  "cases": [\n')
        f.write(",\n".join(f'    {{"text": {json.dumps(t)}, {compact(c)[1:]}'
                           for t, c in zip(texts, cases)))
        f.write("\n  ],\n")
        f.write('  "wiki_lines": [\n')
        f.write(",\n".join(f"    {compact(ids)}" for ids in wiki))
        f.write("\n  ],\n")
        import struct
        whole_hash = fnv1a64(struct.pack(f"<{len(whole)}i", *whole))
        f.write(f'  "wiki_whole": {{"bytes": {len(raw.encode())}, "ids": {len(whole)}, '
                f'"fnv1a64": "{whole_hash:016x}"}}\n}}\n')
    json.loads(out.read_text(encoding="utf-8"))
    n_hf_diff = sum("hf_ids" in c for c in cases)
    print(f"wrote {out} ({out.stat().st_size} bytes): {len(cases)} texts, {len(wiki)} wiki lines; "
          f"hf ids differ from sentencepiece on {n_hf_diff} texts" if hf else "")


if __name__ == "__main__":
    main()
