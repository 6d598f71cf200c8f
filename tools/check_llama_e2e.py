#!/usr/bin/env python3
"""Greedy ids of kvcar-generate on the random Llama of tests/fixtures/llama_e2e.json against
transformers' (the fixture), on any device: the CPU test (tests/tokenizers/llama_e2e.cpp) covers
the CPU model; this covers `--device cuda`.

    python3 tools/make_llama_e2e_fixture.py --out /tmp/llama-e2e --no-fixture \\
        --tokenizer ../shared/data/tokenizers/llama2/tokenizer.model
    python3 tools/check_llama_e2e.py --generate build/examples/kvcar-generate \\
        --model /tmp/llama-e2e --device cuda

Prints one line per prompt and exits 1 when any generated id differs (with where it first does,
and transformers' smallest top-2 logit gap for that prompt, which says how close a tie was).
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--generate", required=True, help="the kvcar-generate binary")
    ap.add_argument("--model", required=True, help="the folder make_llama_e2e_fixture.py wrote")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--kv", default="identity-f32",
                    help="the cache (default identity-f32: the fixture is fp32 transformers)")
    ap.add_argument("--fixture", default=str(ROOT / "tests/fixtures/llama_e2e.json"))
    a = ap.parse_args()
    fixture = json.loads(Path(a.fixture).read_text())
    bad = 0
    for case in fixture["cases"]:
        want_prompt, want = case["prompt_ids"], case["generated_ids"]
        cmd = [a.generate, "--model", a.model, "--device", a.device, "--kv", a.kv,
               "--prompt-ids", " ".join(map(str, want_prompt)), "--steps", str(len(want)),
               "--temperature", "0", "--print-ids"]
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if p.returncode != 0:
            print(f"FAIL {case['text']!r}: exit {p.returncode}\n{p.stderr[-2000:]}")
            bad += 1
            continue
        ids = json.loads(p.stdout.strip().splitlines()[-1])
        got = ids[len(want_prompt):]
        if ids[:len(want_prompt)] == want_prompt and got == want:
            print(f"ok   {case['text']!r}: {len(got)} greedy ids equal transformers'")
            continue
        k = next((i for i, (x, y) in enumerate(zip(got, want)) if x != y), min(len(got), len(want)))
        print(f"FAIL {case['text']!r}: first difference at generated token {k} "
              f"(got {got[k:k + 3]}, want {want[k:k + 3]}; transformers' min top-2 gap "
              f"{case.get('min_top2_gap')})")
        bad += 1
    print(f"{len(fixture['cases']) - bad}/{len(fixture['cases'])} prompts equal on {a.device}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
