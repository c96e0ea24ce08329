#!/usr/bin/env bash
# The GPU check, inside 10 minutes on one CUDA GPU: the tests that run on CUDA, then a short
# `effzoo bench --device cuda` sweep. Run from the repository root:
#
#     OUT=/some/folder bash benchmarks/gpu.sh
#
# Everything it produces goes under $OUT (default benchmarks/results/gpu-<time>): the versions and
# the GPU (environment.txt, nvidia-smi.txt), the test log and JUnit XML, the bench's JSON lines,
# markdown table and plots. Each step runs under `timeout`; the limits below add up to under 10
# minutes and can be changed through the environment. The exit status is the tests' when they
# fail (or time out), else the bench's, else 0: a bench that is cut short by its time limit
# still leaves the points it measured, and the script says so.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-benchmarks/results/gpu-$(date +%Y%m%d-%H%M%S)}"
SETUP_TIMEOUT_S="${SETUP_TIMEOUT_S:-120}"
TEST_TIMEOUT_S="${TEST_TIMEOUT_S:-210}"
BENCH_TIMEOUT_S="${BENCH_TIMEOUT_S:-240}"
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
mkdir -p "$OUT"
export OUT HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1

step() { echo; echo "== $* ($(date +%H:%M:%S))"; }

step "environment"
timeout 60 "$PYTHON" -c "import torch; print(torch.__version__, torch.cuda.is_available())" \
    | tee "$OUT/environment.txt"
timeout 30 nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed or is missing" | tee -a "$OUT/environment.txt"

if ! timeout 120 "$PYTHON" -c "import effzoo" 2> "$OUT/import-error.txt"; then
    step "effzoo does not import (see import-error.txt): pip install -e .[test]"
    if ! timeout "$SETUP_TIMEOUT_S" "$PYTHON" -m pip install --quiet -e ".[test]" > "$OUT/pip.log" 2>&1; then
        echo "pip install failed or timed out (see pip.log); trying the working tree on PYTHONPATH"
        export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    fi
    if ! timeout 120 "$PYTHON" -c "import effzoo" 2>> "$OUT/import-error.txt"; then
        echo "effzoo still does not import; see $OUT/import-error.txt" >&2
        exit 3
    fi
fi
timeout 120 "$PYTHON" -c "
import platform, torch, transformers, effzoo
print('python', platform.python_version(), '| torch', torch.__version__, '| CUDA', torch.version.cuda,
      '| transformers', transformers.__version__, '| effzoo', effzoo.__version__)
print('GPU', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')" | tee -a "$OUT/environment.txt"

step "tests on CUDA: pytest -k cuda (limit ${TEST_TIMEOUT_S} s)"
timeout -k 15 "$TEST_TIMEOUT_S" "$PYTHON" -m pytest -q -p no:cacheprovider -k cuda -rs \
    --junitxml "$OUT/pytest-cuda.xml" 2>&1 | tee "$OUT/pytest-cuda.log"
tests=$?
case $tests in
    0) echo "tests passed" ;;
    124|137) echo "tests timed out after ${TEST_TIMEOUT_S} s" ;;
    5) echo "no test matched -k cuda: the device parametrisation is missing" ;;
    *) echo "tests failed (pytest exit status $tests)" ;;
esac

step "bench on CUDA (limit ${BENCH_TIMEOUT_S} s)"
# SIGINT first: the harness then writes the points measured so far, its table and plots.
timeout -s INT -k 20 "$BENCH_TIMEOUT_S" "$PYTHON" -m effzoo.cli bench full bert_sdpa performer longformer bigbird \
    --device cuda --min-length 1024 --max-length 16384 --modes train infer \
    --warmup 2 --repeats 10 --min-repeats 3 --target-s 2 --budget-s 20 \
    --quiet-wait-s 0 --max-retries 0 --point-retries 0 --output "$OUT/bench" 2>&1 | tee "$OUT/bench.log"
bench=$?
case $bench in
    0) echo "bench complete" ;;
    124|130|137) echo "bench cut short after ${BENCH_TIMEOUT_S} s: $OUT/bench holds the points measured" ;;
    *) echo "bench failed (exit status $bench)" ;;
esac

step "done: results in $OUT"
ls -l "$OUT" "$OUT/bench" 2>/dev/null
if [ "$tests" -ne 0 ]; then exit "$tests"; fi
exit "$bench"
