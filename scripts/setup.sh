#!/usr/bin/env bash
# One-time (then cached) set-up: a virtual environment in .venv with azion_ai and every extra.
# Safe to run again: it reinstalls only when pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.azion-ai-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setting up .venv (first run takes a few minutes: torch, transformers, gptqmodel)..." >&2
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first, pinned: a bare 'torch' requirement would pull a multi-GB build from the index.
  # torchvision is required by the Qwen2.5-VL and InternVL processors in transformers 5.
  if [ "$(uname -m)" = "aarch64" ]; then
    .venv/bin/python -m pip install -q torch==2.9.1 torchvision==0.24.1
  else
    .venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
  fi
  .venv/bin/python -m pip install -q -e ".[local,server,dev]"
  echo "$want" > "$stamp"
fi
