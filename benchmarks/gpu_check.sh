#!/usr/bin/env bash
# The engine on a GPU in one short run (about 3-5 minutes): the gpu-marked engine tests, then
# benchmarks/engine_speed.py on packages/default with the labelled test images, written to
# benchmarks/results/gpu/engine.json (rows: mode, budget, images_per_s, p50_ms, p99_ms,
# accuracy, mean_compute_fraction, device, ...). No network and no pip index are needed there.
#
# What it needs besides a Python with torch and numpy (run these where pip and the data are):
#   data/engine_test_images.npz   the package's held test images, preprocessed (11 MB):
#       python -m benchmarks.engine_speed --save-images data/engine_test_images.npz \
#           --data-dir /path/to/cifar10-train-jpg.tar.gz
#   .whl/                         wheels for Python 3.12 of what a torch image usually lacks
#       (pydantic, pydantic-settings, fastapi, ...): benchmarks/gpu_check.sh --prepare
# Both are ignored by git: carry them (".whl", "data/engine_test_images.npz").
#
# Usage: benchmarks/gpu_check.sh [--prepare] [--device auto|cuda|cpu] [--seconds S] [--out FILE]
#                                [--limit-images N]
# PYTHON=... picks the interpreter (default python3). A CPU dry run of the whole script:
#   PYTHON=.venv/bin/python benchmarks/gpu_check.sh --device cpu --seconds 1 --limit-images 64
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE=auto SECONDS_PER_ROW=5 OUT=benchmarks/results/gpu/engine.json PREPARE=0 LIMIT=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --prepare) PREPARE=1 ;;
    --device) DEVICE="$2"; shift ;;
    --seconds) SECONDS_PER_ROW="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --limit-images) LIMIT=(--limit-images "$2"); shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

WHEELS=(fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic-core==2.50.5
        pydantic-settings==2.16.3 python-dotenv==1.2.4 python-multipart==0.0.34
        typing-inspection==0.4.5 annotated-types==0.8.0 typing-extensions==4.16.0
        anyio==4.16.0 annotated-doc==0.0.7)
if [[ $PREPARE == 1 ]]; then
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
  exit 0
fi

PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
if ! "$PY" -c "import pydantic_settings, fastapi" 2>/dev/null; then
  [[ -d .whl ]] || { echo "pydantic/fastapi missing and no .whl/ to install them from" >&2; exit 1; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/anytime-site .whl/*.whl
  export PYTHONPATH=/tmp/anytime-site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

IMAGES=data/engine_test_images.npz
[[ -f $IMAGES ]] || { echo "$IMAGES missing (see the header of this script)" >&2; exit 1; }
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version --format=csv,noheader

echo "== gpu-marked engine tests (they skip without CUDA)"
"$PY" -m pytest -q -m gpu -p no:cacheprovider tests/service/test_engine_gpu.py \
  tests/service/test_engine.py::test_cuda_backends_agree_with_cpu || echo "gpu tests FAILED"

mkdir -p "$(dirname "$OUT")"
TMP=$(mktemp -d)
BENCH=("$PY" -m benchmarks.engine_speed --backend torch --device "$DEVICE" --images-npz "$IMAGES"
       --seconds "$SECONDS_PER_ROW" --clients 16 --full-accuracy "${LIMIT[@]}")
echo "== fp32: the modes at budgets 1.0 and 0.5, requests of 1 and 16 images"
"${BENCH[@]}" --modes run_to_end shrink rebatch --budgets 1.0 0.5 --images 1 16 --json "$TMP/fp32.json"
echo "== fp16 / bf16 against fp32 (served only within 0.1 point of fp32's accuracy)"
"${BENCH[@]}" --modes shrink --budgets 1.0 0.5 --images 16 --dtypes float16 bfloat16 \
  --json "$TMP/half.json"

"$PY" - "$TMP/fp32.json" "$TMP/half.json" "$OUT" <<'EOF'
import json, sys
rows = json.load(open(sys.argv[1])) + json.load(open(sys.argv[2]))
fp32 = {(r["mode"], r["budget"], r["request_images"]): r for r in rows if r["dtype"] == "float32"}
for r in rows:
    ref = fp32.get((r["mode"], r["budget"], r["request_images"]))
    if r["dtype"] != "float32" and ref is not None and r["accuracy"] is not None:
        r["accuracy_vs_fp32_points"] = round(100 * (r["accuracy"] - ref["accuracy"]), 3)
        r["precision_ok"] = abs(r["accuracy_vs_fp32_points"]) <= 0.1
json.dump(rows, open(sys.argv[3], "w"), indent=2)
print(f"{'mode':<10} {'dtype':<8} {'budget':>6} {'imgs':>4} {'images/s':>9} {'p50 ms':>7} "
      f"{'p99 ms':>7} {'acc %':>6} {'frac':>5}")
for r in rows:
    acc = "n/a" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f}"
    print(f"{r['mode']:<10} {r['dtype']:<8} {r['budget']:>6} {r['request_images']:>4} "
          f"{r['images_per_s']:>9.1f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} {acc:>6} "
          f"{r['mean_compute_fraction']:>5.3f}")
by = {(r["mode"], r["budget"], r["request_images"], r["dtype"]): r["images_per_s"] for r in rows}
for size in (1, 16):
    end = by.get(("run_to_end", 1.0, size, "float32"))
    early = by.get(("shrink", 0.5, size, "float32"))
    if end and early:
        print(f"requests of {size}: shrink at budget 0.5 = {early / end:.2f}x run_to_end")
EOF
echo "wrote $OUT"
