#!/usr/bin/env bash
# The GPU machine's check, in one run (see DEVELOPERS.md: 15 minutes of device time a session).
# Prepare here:  pip download --no-deps -d .device/wheels gguf   (the GPU machine lacks gguf;
#                .device/ is git-ignored: pass it with the run tool's carry=[".device"])
# There:         bash tools/gpu_check.sh     (writes $OUT/gpu_tests.txt, $OUT/gpu_bench.{md,json})
set -uo pipefail
OUT="${OUT:-/tmp/gpu_out}"
mkdir -p "$OUT"
python -m pip install -q --no-deps --no-index --find-links .device/wheels gguf 2>&1 | tail -1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"
# the CUDA tests (and the rest of the torch backend's), on tiny random models
timeout 240 python -m pytest -q -x -p no:cacheprovider tests/test_torch_backend.py -m "not smollm2" 2>&1 | tail -25 > "$OUT/gpu_tests.txt"
tail -3 "$OUT/gpu_tests.txt"
timeout 300 python tools/gpu_bench.py --json "$OUT/gpu_bench.json" > "$OUT/gpu_bench.md" 2> "$OUT/gpu_bench.log"
cat "$OUT/gpu_bench.md"; tail -5 "$OUT/gpu_bench.log"
