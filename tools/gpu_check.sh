#!/usr/bin/env bash
# The GPU machine's check, in one run (see DEVELOPERS.md: 15 minutes of device time a session).
# Prepare here:  pip download --no-deps -d .device/wheels gguf   (the GPU machine lacks gguf;
#                .device/ is git-ignored: pass it with the run tool's carry=[".device"])
# There:         bash tools/gpu_check.sh
# Writes $OUT/gpu.txt, gpu_tests.txt, gpu_bench.{md,json,log}, gpu_profile.txt; each stage has its
# own time limit, and the benchmark saves its JSON after each model, so a cut keeps what ran.
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # ggq from this tree: nothing is installed there
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/gpu_out}"
T_TESTS="${T_TESTS:-200}"
T_BENCH="${T_BENCH:-260}"
mkdir -p "$OUT"
python -m pip install -q --no-deps --no-index --find-links .device/wheels gguf 2>&1 | tail -1
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
  python -c "import torch, triton, numba, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'numba', numba.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
  nproc; } 2>&1 | tee "$OUT/gpu.txt"
# the CUDA tests (and the CPU checks they lean on), tiny random models
timeout "$T_TESTS" python -m pytest -q -p no:cacheprovider tests/test_torch_backend.py -m "not smollm2" \
  -k "(cuda or graphs or triton) and not interpreter" -rs > "$OUT/gpu_tests.txt" 2>&1
grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_tests.txt" | tail -30
timeout "$T_BENCH" python tools/gpu_bench.py --json "$OUT/gpu_bench.json" --profile-out "$OUT/gpu_profile.txt" \
  > "$OUT/gpu_bench.md" 2> "$OUT/gpu_bench.log"
echo "gpu_bench exit $?"
cat "$OUT/gpu_bench.md"; grep -v "^USDT\|Warning\|warn(" "$OUT/gpu_bench.log" | tail -30
