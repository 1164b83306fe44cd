#!/usr/bin/env bash
# The one prepared script a GPU session runs (on an offline machine whose stock Python 3.12 has
# torch, transformers, pytest... but none of our other dependencies; docs/benchmarks.md, "How to
# run on a GPU"): installs .whl/ (made beforehand by scripts/gpu_wheels.sh, carried along), runs
# the gpu suite, then benchmarks/gpu.py, each under `timeout`, writing everything under $OUT as it
# goes (a killed step leaves what it did). Exits with the suite's status.
#
#   bash scripts/gpu_check.sh            # all: install, environment, suite, benchmark (< 8 min)
#   bash scripts/gpu_check.sh suite      # install, environment, suite
#   bash scripts/gpu_check.sh bench      # install, environment, benchmark
#
# Environment: OUT (default /tmp/gpu-check), SITE (where the wheels go, default /tmp/site),
# SUITE_TIMEOUT (s, default 240), BENCH_TIMEOUT (s, default 210), PYTEST_ARGS (one pass with this
# selection instead of the two, e.g. "-k lora"), BENCH_ARGS (e.g. "--compile --max-batch-size 8").
# What comes back under $OUT: gpu_check.log (this script's steps), install.log, env.txt,
# suite-eager.log and suite-fast.log (one line per test as it runs) and their .xml, bench.log, bench/gpu-results.{md,json,png}.
set -uo pipefail
cd "$(dirname "$0")/.."
stage=${1:-all}
out=${OUT:-/tmp/gpu-check}
suite_timeout=${SUITE_TIMEOUT:-240}
bench_timeout=${BENCH_TIMEOUT:-210}
site=${SITE:-/tmp/site}
mkdir -p "$out"
started=$SECONDS
say() { echo "[gpu_check +$((SECONDS - started))s] $*" | tee -a "$out/gpu_check.log"; }
case $stage in all|suite|bench) ;; *) echo "usage: bash scripts/gpu_check.sh [all|suite|bench]" >&2; exit 2;; esac

# 1. the wheels, into a folder of their own first on PYTHONPATH (the image's packages stay as they are)
if ! compgen -G ".whl/*.whl" > /dev/null; then
  say "no wheels in .whl/: run 'bash scripts/gpu_wheels.sh' where PyPI is reachable and carry .whl"
  exit 3
fi
say "installing $(ls .whl/*.whl | wc -l) wheels into $site"
if ! python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl > "$out/install.log" 2>&1; then
  say "pip install failed:"; tail -n 20 "$out/install.log" | tee -a "$out/gpu_check.log"
  exit 3
fi
export PYTHONPATH=$site:$PWD
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 AZION_AI_QUIET=1

# 2. what this machine is, and whether everything imports
{
  nvidia-smi 2>&1 | head -n 20
  python3 - <<'EOF'
import importlib, platform
print("python", platform.python_version())
for name in ("torch", "transformers", "tokenizers", "safetensors", "xgrammar", "jsonschema", "pydantic", "peft", "PIL", "pytest", "matplotlib", "gptqmodel", "vllm", "azion_ai", "azion_ai._local._backend"):
    try:
        module = importlib.import_module(name)
        print(f"{name:28} {getattr(module, '__version__', 'ok')}  {getattr(module, '__file__', '')}")
    except Exception as exc:  # noqa: BLE001 - this is the report
        print(f"{name:28} NOT IMPORTABLE: {type(exc).__name__}: {exc}")
import torch
print("cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device: {p.name}, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}, bf16 {torch.cuda.is_bf16_supported()}")
EOF
} > "$out/env.txt" 2>&1
say "environment: $(grep -E '^(device|cuda available)' "$out/env.txt" | tr '\n' ' ')"
grep "NOT IMPORTABLE" "$out/env.txt" | grep -v -E "^(gptqmodel|vllm|matplotlib) " | tee -a "$out/gpu_check.log"

# 3. the gpu suite in two passes, so that a timeout cuts the costly part: first the eager path
# (every check and behaviour), then the fast path (compile=True: CUDA graphs, compile time)
suite=0
suite_end=$((SECONDS + suite_timeout))
run_pass() {  # name, pytest selection
  local left=$((suite_end - SECONDS))
  if [ $left -lt 30 ]; then say "suite pass '$1' not run: the suite's ${suite_timeout}s are spent"; [ $suite -eq 0 ] && suite=124; return; fi
  say "suite pass '$1' (timeout ${left}s): tests/test_gpu.py tests/test_gpu_behaviour.py $2"
  # no third-party pytest plugins: the image's may not match its pytest, and the suite needs none
  eval "PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 timeout -k 15 $left python3 -m pytest -p no:cacheprovider -m gpu \
      tests/test_gpu.py tests/test_gpu_behaviour.py -v -rfEs --durations=25 --junitxml '$out/suite-$1.xml' $2" \
      > "$out/suite-$1.log" 2>&1
  local status=$?
  { [ $status -eq 124 ] || [ $status -eq 137 ]; } && say "suite pass '$1' stopped at its timeout: suite-$1.log has the tests that ran"
  say "suite pass '$1' exit status $status: $(grep -c ' PASSED' "$out/suite-$1.log") passed, $(grep -c ' FAILED' "$out/suite-$1.log") failed, $(grep -c ' ERROR' "$out/suite-$1.log") errors, $(grep -c ' SKIPPED' "$out/suite-$1.log") skipped"
  [ $status -ne 0 ] && [ $suite -eq 0 ] && suite=$status
}
if [ "$stage" != bench ]; then
  if [ -n "${PYTEST_ARGS:-}" ]; then
    run_pass chosen "$PYTEST_ARGS"
  else
    run_pass eager "-k 'not fast and not two_compiled and not lora'"
    run_pass fast "-k 'fast or two_compiled or lora'"
  fi
fi

# 4. the benchmark: full-size random checkpoints, default options, its own deadline inside ours
if [ "$stage" != suite ]; then
  say "benchmark (timeout ${bench_timeout}s): benchmarks/gpu.py --out $out/bench ${BENCH_ARGS:-}"
  eval "timeout -k 15 $bench_timeout python3 benchmarks/gpu.py --out '$out/bench' --deadline $((bench_timeout - 25)) ${BENCH_ARGS:-}" > "$out/bench.log" 2>&1
  bench=$?
  say "benchmark exit status $bench"
fi

# 5. the summary (the device tool returns the end of the output)
if [ "$stage" != bench ]; then
  for log in "$out"/suite-*.log; do
    echo "===== $(basename "$log"): failures, errors and skips ====="
    if grep -q 'short test summary info' "$log"; then
      sed -n '/short test summary info/,$p' "$log" | cut -c1-300 | tail -n 40
    else  # stopped at its timeout: the tests that failed so far, and where it stopped
      grep -E ' (FAILED|ERROR)' "$log" | cut -c1-300 | tail -n 40
      echo "(stopped before its summary; the last test it started:)"; grep -E '^tests/' "$log" | tail -n 1 | cut -c1-300
    fi
  done
fi
if [ "$stage" != suite ]; then
  echo "===== benchmark ====="
  if [ -f "$out/bench/gpu-results.md" ]; then cat "$out/bench/gpu-results.md"; else tail -n 30 "$out/bench.log"; fi
  grep -E "^plot|Traceback|Error" "$out/bench.log" | tail -n 5
fi
say "done in $((SECONDS - started)) s; suite status $suite"
exit $suite
