#!/usr/bin/env bash
# Set up (cached) and run the whole test suite, then lint and type-check the package.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_vllm.sh   # real vLLM, the reference the conformance tests compare with
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/python -m ruff check azion_ai
.venv/bin/python -m mypy azion_ai
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
if [ $# -eq 0 ]; then
  # engine="vllm" runs where vLLM imports: the reference environment, on this checkout
  PYTHONPATH="$PWD" .venv-vllm/bin/python -m pytest -q -p no:cacheprovider tests/engine_vllm
fi
