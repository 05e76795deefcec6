#!/usr/bin/env bash
# The GPU benchmark, on the device machine, from a copy of the working tree (docs/benchmarks.md, "On the GPU").
#
# usage: bash scripts/gpu_bench.sh          carried: .whl and .gpu-data (bash scripts/gpu_wheelhouse.sh builds them)
#
# That machine has python3 with a CUDA torch but no DCMTK, no Orthanc and no package archive, so:
#   1. say what is there (python3, torch and its GPU, nvidia-smi, gcc);
#   2. make the project importable without a registry: the carried wheels, and annoy built from
#      its sdist, into /tmp/site, put on PYTHONPATH before the tree (no venv: python3 keeps its torch);
#   3. sample GPU utilisation (scripts/gpu_util.py) while bench_e2e runs with --peers pynetdicom
#      and --device cuda: detector-size images (the real case) at batch sizes 1, 8, 32, 64, a
#      sequential pass for latency and a burst from several associations for throughput; then
#      small images, where receiving 10 MB per study does not bound the rate;
#   4. write everything under $OUT (bench-out/gpu without it): bench_e2e.json per part, the GPU
#      samples, gpu_summary.json and summary.txt, and this script's log.
# Sizes are set by environment variables (defaults sized to end in about 6-7 minutes).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-out/gpu}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_bench.log") 2>&1
PY=${PYTHON:-python3}
SITE=${SITE:-/tmp/site}
CXR_N=${CXR_N:-256}            # burst studies at detector size (~10 MB each)
SMALL_N=${SMALL_N:-512}        # burst studies at 256 x 256; 0 skips the small part
SEQ_N=${SEQ_N:-24}             # sequential studies per batch size
BATCHES=${BATCHES:-1,8,32,64}
SMALL_BATCHES=${SMALL_BATCHES:-1,64}
SENDERS=${SENDERS:-4}          # associations at once in each burst
RESULTS=${RESULTS:-summary}    # the shipped [results] profile
FLOOR_N=${FLOOR_N:-64}
DEVICE=${DEVICE:-cuda}         # cpu: a dry run of this script on a machine without a GPU
SKIP_INSTALL=${SKIP_INSTALL:-0}  # 1: the packages are importable already (a dry run in the project venv)
started=$(date +%s)
step() { echo "== $(( $(date +%s) - started )) s: $*"; }

step "what is there"
command -v "$PY" || { echo "no $PY"; exit 2; }
"$PY" - <<'PY' || { echo "no usable torch"; exit 2; }
import sys, torch
print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0))
PY
nvidia-smi --query-gpu=name,driver_version,memory.total,utilization.gpu --format=csv || echo "no nvidia-smi"
command -v gcc || echo "no gcc: annoy cannot be built"
nproc; free -g | head -2
echo "wheelhouse built at: $(tr '\n' ' ' < .gpu-data/COMMIT 2>/dev/null)"

step "the project's missing packages into $SITE"
ls .whl/*.whl .whl/annoy-*.tar.gz .gpu-data/manifest.csv || { echo "carry .whl and .gpu-data (scripts/gpu_wheelhouse.sh)"; exit 2; }
if [ "$SKIP_INSTALL" != 1 ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl || exit 2
    # annoy has no wheel; portable flags instead of its -march=native (docs: toolchain notes).
    ANNOY_COMPILER_ARGS="-D_CRT_SECURE_NO_WARNINGS,-fpermissive,-O3,-ffast-math,-fno-associative-math,-DANNOYLIB_MULTITHREADED_BUILD,-std=c++14" \
        "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target "$SITE" \
        .whl/annoy-*.tar.gz || { echo "annoy did not build"; exit 2; }
fi
export PYTHONPATH="$SITE:$PWD" CXR_SHARED_DATA="$PWD/.gpu-data" PYTHONUNBUFFERED=1
"$PY" -c 'import annoy, highdicom, monai, pydicom, pynetdicom, torch; import dicom_node.app, monai_app.inference
print("imports ok: monai", monai.__version__, "pydicom", pydicom.__version__, "torch", torch.__version__)' || exit 2

step "GPU sampling"
"$PY" -m scripts.gpu_util sample --out "$OUT/gpu_util.csv" --interval 0.25 &
sampler=$!
trap 'kill "$sampler" 2>/dev/null' EXIT

step "detector size: $CXR_N studies, batch sizes $BATCHES"
"$PY" -m scripts.bench_e2e --device "$DEVICE" --runtime pytorch --peers pynetdicom --size cxr --n "$CXR_N" \
    --sequential "$SEQ_N" --senders "$SENDERS" --batch-sizes "$BATCHES" --results "$RESULTS" \
    --floor-n "$FLOOR_N" --timeout 300 --out "$OUT/cxr" --work /tmp
if [ "$SMALL_N" -gt 0 ]; then
    step "small: $SMALL_N studies, batch sizes $SMALL_BATCHES"
    "$PY" -m scripts.bench_e2e --device "$DEVICE" --runtime pytorch --peers pynetdicom --size small --n "$SMALL_N" \
        --sequential "$SEQ_N" --senders "$SENDERS" --batch-sizes "$SMALL_BATCHES" --results "$RESULTS" \
        --no-floor --timeout 300 --out "$OUT/small" --work /tmp
fi

step "summary"
kill "$sampler" 2>/dev/null
"$PY" -m scripts.gpu_util summarize --samples "$OUT/gpu_util.csv" --bench "$OUT/cxr/bench_e2e.json" \
    --bench "$OUT/small/bench_e2e.json" --out "$OUT/gpu_summary.json" | tee "$OUT/summary.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >> "$OUT/summary.txt" || true
echo "wheelhouse built at: $(tr '\n' ' ' < .gpu-data/COMMIT 2>/dev/null)" >> "$OUT/summary.txt"
step "done"
