#!/usr/bin/env bash
# Set up (cached) and run the side-by-side benchmarks; --write stores the table in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python benchmarks/run.py "$@"
