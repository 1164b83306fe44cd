#!/usr/bin/env bash
# The wheels scripts/gpu_check.sh installs on an offline GPU machine, in .whl/ (git-ignored).
#
#   bash scripts/gpu_wheels.sh          # from the checkout, on a machine that reaches PyPI
#
# ../shared/gpu/offline-wheels.sh's set (transformers 5.24, our dependencies, the server, xgrammar,
# pytest-asyncio, respx, openai) plus what it lacks for that machine's image (torch 2.11,
# transformers 5.17, tokenizers, safetensors, pillow, httpx, anyio, jinja2, accelerate, peft,
# pytest; Python 3.12): attrs (jsonschema and referencing import it), apache-tvm-ffi (xgrammar
# imports it), huggingface_hub >= 1.31 and click (transformers 5.24 checks the hub's version when
# imported; 5.17 asked only for >= 1.5), sniffio (openai), and matplotlib with its dependencies
# (the benchmark's plot). Pinned where .venv runs the same pair.
# The result must stay under the device tool's 64 MiB carry limit; the script checks.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
dir=.whl
shared=$(realpath "${AZION_AI_OFFLINE_WHEELS:-../shared/gpu/offline-wheels.sh}")
if [ -d .git ]; then
  bash "$shared" "$dir"
else
  # a git worktree: .git is a file, and offline-wheels.sh notes its folder in .git/info/exclude
  # (.whl/ is in .gitignore anyway): run it from a scratch folder that has one
  scratch=$(mktemp -d)
  mkdir -p "$scratch/.git/info"
  (cd "$scratch" && bash "$shared" "$root/$dir")
  rm -rf "$scratch"
fi
plat=(--only-binary=:all: --no-deps --python-version 3.12 --implementation cp
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
for pkg in attrs "apache-tvm-ffi==0.1.15.post2" "huggingface_hub==1.33.0" "click==8.5.1" sniffio \
           matplotlib contourpy cycler fonttools kiwisolver pyparsing python-dateutil six; do
  python3 -m pip download -q "${plat[@]}" -d "$dir" "$pkg" 2>&1 | grep -v '^WARNING' || true
done
for needed in transformers-5.24.0 attrs- apache_tvm_ffi- huggingface_hub-1.33.0 xgrammar- jsonschema- pydantic_core-; do
  compgen -G "$dir/$needed*" > /dev/null || { echo "gpu_wheels.sh: no $needed wheel in $dir (is PyPI reachable?)" >&2; exit 1; }
done
size=$(du -sm "$dir" | cut -f1)
echo "$dir: $(ls "$dir" | wc -l) wheels, ${size} MiB"
if [ "$size" -ge 64 ]; then
  echo "gpu_wheels.sh: $dir is ${size} MiB, over the device tool's 64 MiB carry limit: remove old versions (rm -r $dir and rerun)" >&2
  exit 1
fi
