#!/usr/bin/env bash
# The GPU acceptance run: the CUDA-path tests, then the gpu suite (shapes A and B, fp32 and
# bf16-autocast, every workload), on a CUDA machine without network and without pip.
#
#   RESBENCH_COMMIT=$(git rev-parse HEAD) scripts/gpu_acceptance.sh OUT_DIR
#
# Writes OUT_DIR/{pytest.log, run.log, gpu.jsonl, report.md, env.txt}, then the decode suite
# (INFERENCE_SUITE, default inference-gpu; empty: skipped) as OUT_DIR/{inference.jsonl,
# inference.md, inference.log}. It needs python3 with
# torch, pyyaml, tabulate, tqdm, numpy, scipy and pytest; resbench itself is laid out from this
# checkout as its wheel would install it (pyproject.toml's package-dir mapping), so no pip runs.
# Overrides, for a check of the plumbing on a CPU: SUITE (default gpu), DEVICE (default: the
# suite's), TESTS (default tests/test_cuda.py).
set -uo pipefail
out=${1:?usage: scripts/gpu_acceptance.sh OUT_DIR}
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
cp -r "$root/harness" "$site/resbench"
cp -r "$root/variants" "$site/resbench/variants"
cp -r "$root/benchmarks/suites" "$site/resbench/suites"
export PYTHONPATH="$site"
py=${PYTHON:-python3}
{
  date -u
  "$py" -m resbench --version
  "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
  command -v nvidia-smi >/dev/null && nvidia-smi
} > "$out/env.txt" 2>&1

status=0
# pytest from the checkout (its conftest), with pyproject's addopts off: pytest-benchmark may be absent
(cd "$root" && "$py" -m pytest -q -o addopts="" -p no:cacheprovider -m "not slow" "${TESTS:-tests/test_cuda.py}") \
  > "$out/pytest.log" 2>&1 || status=1
tail -n 3 "$out/pytest.log"

device_args=()
[ -n "${DEVICE:-}" ] && device_args=(--device "$DEVICE")
(cd "$out" && "$py" -m resbench run "${SUITE:-gpu}" --out "$out/gpu.jsonl" --quiet "${device_args[@]}") \
  > "$out/report.md" 2> "$out/run.log" || status=1
tail -n 3 "$out/run.log"
inference=${INFERENCE_SUITE-inference-gpu}
if [ -n "$inference" ]; then
  (cd "$out" && "$py" -m resbench run "$inference" --out "$out/inference.jsonl" --quiet "${device_args[@]}") \
    > "$out/inference.md" 2> "$out/inference.log" || status=1
  tail -n 3 "$out/inference.log"
fi
exit $status
