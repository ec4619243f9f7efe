#!/usr/bin/env bash
# The engine on a GPU in one short run (about 5-8 minutes): the gpu-marked engine tests, then
# benchmarks/engine_speed.py on packages/default with the labelled test images, then the HTTP
# server under both engine topologies (per-worker engines vs front ends feeding one engine
# process: benchmarks/topology_sim.py on the real device, wrk, one held-out JPEG per request),
# all written to benchmarks/results/gpu/engine.json (rows: mode, topology, budget, images_per_s,
# p50_ms, p99_ms, accuracy, device, ...; mode "http" for the server rows, topology "in-process"
# for the engine's own). No network and no pip index are needed there.
#
# What it needs besides a Python with torch and numpy (run --prepare where pip and the data are):
#   data/engine_test_images.npz   the package's held test images, preprocessed (11 MB)
#   data/held_jpegs/              the same images as JPEGs + labels.txt, for wrk (3 MB)
#   .whl/                         wheels for Python 3.12 of what a torch image usually lacks
#                                 (pydantic, fastapi, uvicorn, opentelemetry, grpcio, ...)
#   .gpu-tools/                   Debian's wrk and its LuaJIT library, used where wrk is missing
#       benchmarks/gpu_check.sh --prepare [--data-dir /path/to/cifar10-train-jpg.tar.gz]
# All are ignored by git: carry them (".whl", "data", ".gpu-tools").
#
# Usage: benchmarks/gpu_check.sh [--prepare] [--device auto|cuda|cpu] [--seconds S] [--out FILE]
#                                [--limit-images N] [--front-ends N] [--data-dir DIR]
# PYTHON=... picks the interpreter (default python3). A CPU dry run of the whole script:
#   PYTHON=.venv/bin/python benchmarks/gpu_check.sh --device cpu --seconds 1 --limit-images 64
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE=auto SECONDS_PER_ROW=5 OUT=benchmarks/results/gpu/engine.json PREPARE=0 LIMIT=() FRONT=4
DATA_DIR=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --prepare) PREPARE=1 ;;
    --device) DEVICE="$2"; shift ;;
    --seconds) SECONDS_PER_ROW="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --limit-images) LIMIT=(--limit-images "$2"); shift ;;
    --front-ends) FRONT="$2"; shift ;;
    --data-dir) DATA_DIR=(--data-dir "$2"); shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

WHEELS=(fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic-core==2.50.5
        pydantic-settings==2.16.3 python-dotenv==1.2.4 python-multipart==0.0.34
        typing-inspection==0.4.5 annotated-types==0.8.0 typing-extensions==4.16.0
        anyio==4.16.0 annotated-doc==0.0.7 uvicorn==0.55.0 httptools==0.9.0
        opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2
        opentelemetry-semantic-conventions==0.66b2 grpcio==1.85.4 protobuf==6.33.6)
if [[ $PREPARE == 1 ]]; then
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
  PY=${PYTHON:-.venv/bin/python}
  "$PY" -m benchmarks.engine_speed --save-images data/engine_test_images.npz "${DATA_DIR[@]}"
  "$PY" -c "import sys; from pathlib import Path; from benchmarks.harness.data import write_held_set
write_held_set(Path('packages/default'), Path('data/held_jpegs'), sys.argv[1] if len(sys.argv) > 1 else None)" \
    "${DATA_DIR[@]:1}"
  mkdir -p .gpu-tools && cp "$(command -v wrk)" .gpu-tools/ \
    && cp -L "$(ldd "$(command -v wrk)" | awk '/libluajit/ {print $3}')" .gpu-tools/
  du -sh .whl data .gpu-tools
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

TOPO_DEVICE=$DEVICE
[[ $TOPO_DEVICE == auto ]] && TOPO_DEVICE=$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
if ! command -v wrk >/dev/null && [[ -x .gpu-tools/wrk ]]; then
  export PATH="$PWD/.gpu-tools:$PATH" LD_LIBRARY_PATH="$PWD/.gpu-tools${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
echo "== HTTP on $TOPO_DEVICE: per-worker engines vs one shared engine process, $FRONT front ends"
"$PY" -m benchmarks.topology_sim --backend torch --device "$TOPO_DEVICE" --front-ends "$FRONT" \
  --device-scales 1 --budgets 1.0 0.5 --repeat 2 --seconds "$SECONDS_PER_ROW" \
  --images-dir data/held_jpegs --out "$TMP/topology.json" || echo "topology rows FAILED"
[[ -f $TMP/topology.json ]] || echo '{"rows": []}' > "$TMP/topology.json"

"$PY" - "$TMP/fp32.json" "$TMP/half.json" "$OUT" "$TMP/topology.json" <<'EOF'
import json, statistics, sys
rows = json.load(open(sys.argv[1])) + json.load(open(sys.argv[2]))
for r in rows:
    r["topology"] = "in-process"
http = [{"mode": "http", "dtype": "float32", "request_images": 1, **{k: r[k] for k in (
    "topology", "front_ends", "budget", "device", "images_per_s", "mean_batch", "p50_ms", "p99_ms",
    "accuracy", "failed")}} for r in json.load(open(sys.argv[4]))["rows"]]
fp32 = {(r["mode"], r["budget"], r["request_images"]): r for r in rows if r["dtype"] == "float32"}
for r in rows:
    ref = fp32.get((r["mode"], r["budget"], r["request_images"]))
    if r["dtype"] != "float32" and ref is not None and r["accuracy"] is not None:
        r["accuracy_vs_fp32_points"] = round(100 * (r["accuracy"] - ref["accuracy"]), 3)
        r["precision_ok"] = abs(r["accuracy_vs_fp32_points"]) <= 0.1
json.dump(rows + http, open(sys.argv[3], "w"), indent=2)
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
for b in (1.0, 0.5):
    med = {t: statistics.median([r["images_per_s"] for r in http
                                 if (r["topology"], r["budget"]) == (t, b)] or [0.0])
           for t in ("per-worker", "shared")}
    batch = {t: statistics.median([r["mean_batch"] for r in http
                                   if (r["topology"], r["budget"]) == (t, b)] or [0.0])
             for t in ("per-worker", "shared")}
    print(f"HTTP budget {b}: per-worker {med['per-worker']:.1f} images/s (mean batch "
          f"{batch['per-worker']:.2f}), shared {med['shared']:.1f} (mean batch {batch['shared']:.2f})")
EOF
echo "wrote $OUT"
