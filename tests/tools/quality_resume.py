"""tools/quality.py --resume: runs that ended ok are kept, the rest run, and a study run with
other settings is refused; a study never replaces a report of other settings unless asked. The
tools are stand-ins that log their calls and print --json."""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    (tmp / "build" / "examples").mkdir(parents=True)
    calls = tmp / "calls.txt"
    for tool, obj in (("kvcar-perplexity", '{"perplexity": 10.0, "tokens_scored": 5}'),
                      ("kvcar-piqa", '{"acc": 0.5, "correct": 1, "examples": 2}'),
                      ("kvcar-calibrate", '{"bytes_per_token": 1}')):
        exe = tmp / "build" / "examples" / tool
        exe.write_text(f"#!/bin/sh\necho {tool} \"$@\" >> {calls}\necho '{obj}'\n")
        exe.chmod(0o755)
    work = tmp / "work"
    base = [sys.executable, str(REPO / "tools" / "quality.py"), "--build", str(tmp / "build"),
            "--data", str(tmp / "data"), "--work", str(work), "--docs", str(tmp / "docs"),
            "--kinds", "perplexity,piqa", "--models", "gpt2-tiny", "--jobs", "2"]

    def run(*extra):
        return subprocess.run(base + list(extra), capture_output=True, text=True)

    # A first study whose deadline passes at once: every run is recorded as skipped.
    first = run("--deadline", "0")
    results = json.loads((work / "quality.json").read_text())
    keys = [k for k, r in results["runs"].items() if "perplexity" in r]
    assert keys, first.stdout + first.stderr
    assert not calls.exists(), "a run started after the deadline"
    # Mark one perplexity run ok by hand, as an interrupted study leaves it.
    done = keys[0]
    results["runs"][done]["perplexity"] = {"status": "ok", "ppl": 99.0, "seconds": 1.0}
    (work / "quality.json").write_text(json.dumps(results))

    resumed = run("--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = json.loads((work / "quality.json").read_text())
    assert after["runs"][done]["perplexity"]["ppl"] == 99.0, "the kept run was run again"
    lines = calls.read_text().splitlines()
    n_ppl = sum(1 for l in lines if l.startswith("kvcar-perplexity"))
    n_piqa = sum(1 for l in lines if l.startswith("kvcar-piqa"))
    assert n_ppl == len(keys) - 1, (n_ppl, len(keys))
    assert n_piqa == len(keys), (n_piqa, len(keys))
    for k in keys:
        assert after["runs"][k]["perplexity"]["status"] == "ok", k
        assert after["runs"][k]["piqa"]["status"] == "ok", k

    # Other settings: the kept numbers would not compare, so --resume refuses before any run.
    calls.unlink()
    # (--docs elsewhere: the report's own check below is another one.)
    refused = run("--resume", "--ppl-tokens", "0", "--docs", str(tmp / "other-docs"))
    assert refused.returncode != 0 and "--resume" in refused.stderr, refused.stderr
    assert "ppl_tokens" in refused.stderr, refused.stderr
    assert not calls.exists()
    # Kept calibrations count as done: the perplexity runs that wait on them start (no hang),
    # and no calibration runs again.
    results = json.loads((work / "quality.json").read_text())
    calibrated = [k for k, r in results["runs"].items() if r["config"].get("calib")]
    assert calibrated
    for k in calibrated:
        results["runs"][k]["calibrate"] = {"status": "ok", "seconds": 1.0}
        results["runs"][k].pop("perplexity", None)
    (work / "quality.json").write_text(json.dumps(results))
    again = subprocess.run(base[:base.index("--kinds")] + [
        "--kinds", "calibrate,perplexity", "--models", "gpt2-tiny", "--jobs", "2", "--resume"],
        capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stdout + again.stderr
    lines = calls.read_text().splitlines()
    assert not any(l.startswith("kvcar-calibrate") for l in lines), lines
    assert sum(1 for l in lines if l.startswith("kvcar-perplexity")) == len(calibrated)

    # The report in --docs was written with the default settings (subset, CPU). A study of other
    # settings aimed at the same folder stops before any run, and the report is untouched.
    report = (tmp / "docs" / "quality.md").read_text()
    calls.unlink()
    refused = subprocess.run(base + ["--device", "cuda"], capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode != 0 and "device='cpu'" in refused.stderr, refused.stderr
    assert "--replace-report" in refused.stderr, refused.stderr
    assert not calls.exists(), "a run started before the report's settings were checked"
    assert (tmp / "docs" / "quality.md").read_text() == report
    # Asked for, it replaces it.
    replaced = subprocess.run(base + ["--ppl-tokens", "7", "--replace-report"],
                              capture_output=True, text=True, timeout=60)
    assert replaced.returncode == 0, replaced.stdout + replaced.stderr
    assert json.loads((tmp / "docs" / "quality.json").read_text())["settings"]["ppl_tokens"] == 7
print("quality.py --resume: ok")
