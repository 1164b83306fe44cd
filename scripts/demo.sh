#!/usr/bin/env bash
# Set up (cached) and run the main job: a real ai.run (Azion if AZION_AI_BASE_URL are
# set, else the local backend on AZION_AI_MODELS_DIR or on tiny random-weight checkpoints built once).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/azion-ai demo "$@"
