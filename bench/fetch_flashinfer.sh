#!/usr/bin/env bash
# Puts FlashInfer's C++ headers into .fi/include (and the CCCL they need into .fi/cccl) (git-ignored through .git/info/exclude: never
# committed) for bench/flashinfer_peer: downloads the flashinfer-python wheel (no dependencies)
# with pip unless one is already in .fi/, and unpacks its flashinfer/data/include folder.
#   bash bench/fetch_flashinfer.sh [version]
set -euo pipefail
mkdir -p .fi
whl=$(ls .fi/flashinfer_python-*.whl .fi/wheel/flashinfer_python-*.whl 2>/dev/null | head -1 || true)
if [ -z "$whl" ]; then
  python3 -m pip download --no-deps -d .fi "flashinfer-python${1:+==$1}"
  whl=$(ls .fi/flashinfer_python-*.whl | head -1)
fi
python3 - "$whl" <<'PY'
import os, sys, zipfile
# include/: FlashInfer's headers; cccl/: the CCCL they are written against (newer than the
# toolkit's), which bench/CMakeLists.txt puts ahead of the toolkit's for flashinfer_peer.
with zipfile.ZipFile(sys.argv[1]) as z:
    for folder in ("include", "cccl"):
        prefix = f"flashinfer/data/{folder}/"
        for name in z.namelist():
            if name.startswith(prefix) and not name.endswith("/"):
                dst = os.path.join(".fi", folder, name[len(prefix):])
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                with open(dst, "wb") as f:
                    f.write(z.read(name))
print("FlashInfer headers from", os.path.basename(sys.argv[1]), "in .fi/include and .fi/cccl")
PY
