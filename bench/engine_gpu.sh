#!/usr/bin/env bash
# The GPU run behind docs/benchmarks.md's engine figures (one H100/H200): the CUDA engine test, then the engine
# bench over the sizes given (SIZE[:ROWS[c]], c = layer checkpointing). Results land in $OUT (default runs/gpu).
#   OUT=runs/gpu SIZES=7b:16c,7b:16 bash bench/engine_gpu.sh
set -u
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__)"
} > "$OUT/machine.txt" 2>&1
# the CUDA test, with a stand-in for pytest where the image has none
timeout 300 python3 - > "$OUT/cuda_test.log" 2>&1 <<'PY'
import sys, types, traceback
sys.path.insert(0, ".")
try:
    import pytest  # noqa: F401
except ImportError:
    stub = types.ModuleType("pytest")
    stub.mark = types.SimpleNamespace(skipif=lambda *a, **k: None)
    sys.modules["pytest"] = stub
from tests.trace_engine import test_cuda_paths as t
for name in [n for n in dir(t) if n.startswith("test_")]:
    try:
        getattr(t, name)()
        print("PASS", name)
    except Exception:
        print("FAIL", name)
        traceback.print_exc()
PY
cat "$OUT/cuda_test.log" | grep -E "^(PASS|FAIL)"
python3 bench/engine_bench.py --device cuda --sizes "${SIZES:-7b:16c,7b:16,7b:32c,0.5b,1.5b}" --out "$OUT/engine.json" ${BENCH_ARGS:-} \
    > "$OUT/engine.log" 2> "$OUT/engine.err"
status=$?
grep '^# ' "$OUT/engine.log" | cut -c1-1500
tail -5 "$OUT/engine.err"
exit $status
