#!/usr/bin/env bash
# Unpacks NCCL's header and shared library from the `nvidia-nccl-cu13` wheel on PyPI into DIR
# (default: ~/.cache/kvcar/nccl), for CMake's NCCL_ROOT. Needs python3 with pip and network; no
# root, nothing installed system-wide. Prints DIR.
#
#   export NCCL_ROOT=$(bash tools/fetch_nccl.sh)
set -euo pipefail
dir=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/kvcar/nccl}
version=${KVCAR_NCCL_VERSION:-2.31.2}
if [ -f "$dir/include/nccl.h" ] && [ -f "$dir/lib/libnccl.so.2" ]; then
  echo "$dir"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --dest "$tmp" \
  --platform manylinux_2_18_x86_64 --platform manylinux2014_x86_64 \
  "nvidia-nccl-cu13==$version" >&2
mkdir -p "$dir/include" "$dir/lib"
python3 - "$tmp" "$dir" <<'PY'
import glob, os, sys, zipfile
src, dst = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(src, "nvidia_nccl_cu13-*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    for name, out in (("nvidia/nccl/include/nccl.h", "include/nccl.h"),
                      ("nvidia/nccl/lib/libnccl.so.2", "lib/libnccl.so.2")):
        with z.open(name) as f, open(os.path.join(dst, out), "wb") as g:
            g.write(f.read())
PY
ln -sf libnccl.so.2 "$dir/lib/libnccl.so"
echo "$dir"
