#!/usr/bin/env bash
# Mutation testing (mutmut 3): each module is mutated in a scratch copy and run against the fast
# tests that cover it. Not in CI (about 30 minutes on 2 cores); the scores live in docs/testing.md.
#   bash scripts/mutation.sh                 every module below, one after the other
#   bash scripts/mutation.sh streaming images  only those (names from the table below)
# Results: .mutation/<name>/ (mutmut's own `mutmut results` / `mutmut show NAME` work there).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
PY="$ROOT/.venv/bin/python"
"$PY" -c "import mutmut" 2>/dev/null || "$PY" -m pip install -q "mutmut==3.8.1"

# name | module to mutate | the fast tests that cover it (test_hostile.py: its in-process tests;
# its server and local-model tests start a server or load weights per mutant, minutes each)
MODULES="
streaming|azion_ai/_streaming.py|tests/test_streaming.py tests/test_remote.py
images|azion_ai/_local/_images.py|tests/test_images.py tests/test_local_units.py
request|azion_ai/_local/_request.py|tests/test_request.py tests/test_local_units.py
internvl_original|azion_ai/_local/_internvl_original.py|tests/test_internvl_original_units.py
schema_compile|azion_ai/_schema_compile.py|tests/test_schema_compile.py tests/test_validation.py
validation|azion_ai/_validation.py|tests/test_validation.py tests/test_schema_compile.py tests/test_hostile.py::test_mutated_seed_payloads tests/test_hostile.py::test_random_json_values tests/test_hostile.py::test_random_payload_shaped_objects tests/test_hostile.py::test_deep_nesting_does_not_crash
response|azion_ai/_local/_response.py|tests/test_response_units.py
chat|azion_ai/_local/_chat.py|tests/test_chat_units.py tests/test_local_units.py
sampling|azion_ai/_local/_sampling.py|tests/test_sampling.py tests/test_local_units.py
"

wanted=("$@")
# AZION_AI_MUTATION: hypothesis runs a tenth of its examples, derandomized (tests/seeds.examples)
# AZION_AI_MUTATION_CACHE: the tiny checkpoints, built once for every mutant of every module
export AZION_AI_MUTATION_CACHE="$ROOT/.mutation/cache"
export AZION_AI_MUTATION=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
unset PYTHONPATH
while IFS='|' read -r name module tests; do
  [ -n "$name" ] || continue
  if [ ${#wanted[@]} -gt 0 ] && [[ ! " ${wanted[*]} " =~ " $name " ]]; then continue; fi
  work="$ROOT/.mutation/$name"
  rm -rf "$work"; mkdir -p "$work"
  cp -r azion_ai tests schemas pyproject.toml "$work/"
  find "$work" -name __pycache__ -prune -exec rm -rf {} +
  {
    echo "[mutmut]"
    echo "source_paths = azion_ai"
    echo "only_mutate = $module"
    echo "also_copy = schemas"
    echo "timeout_multiplier = 3"  # an endless-loop mutant is called out sooner (still caught)
    printf 'pytest_add_cli_args =\n  -p\n  no:cacheprovider\n  -m\n  not vllm and not slow and not gpu\n'
    echo "pytest_add_cli_args_test_selection ="
    for t in $tests; do echo "  $t"; done
  } > "$work/setup.cfg"
  echo "== $name: $module against $tests"
  start=$(date +%s)
  (cd "$work" && nice -n 10 "$PY" -m mutmut run --max-children 1 > run.log 2>&1) || echo "   mutmut exited $? (see $work/run.log)"
  (cd "$work" && "$PY" -m mutmut results --all true > results.txt 2>&1 || true)
  # killed and timeout (an endless loop the tests notice) count as caught; survived and
  # "no tests" (a line no selected test runs) as missed
  "$PY" - "$work/results.txt" "$name" "$(( $(date +%s) - start ))" <<'PYEOF'
import collections, sys
counts = collections.Counter(line.rsplit(": ", 1)[1].strip() for line in open(sys.argv[1]) if ": " in line)
caught = counts["killed"] + counts["timeout"]
total = sum(counts.values())
print(f"   {sys.argv[2]}: {caught}/{total} caught ({100 * caught / max(total, 1):.1f}%) in {sys.argv[3]} s; " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
PYEOF
done <<< "$MODULES"
