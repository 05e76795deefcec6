#!/usr/bin/env bash
# Build what the GPU benchmark carries to the device machine (docs/benchmarks.md, "On the GPU").
#
# usage: bash scripts/gpu_wheelhouse.sh        (from the repository root, on a machine with pip)
#
# The device machine has python3 3.12 with a CUDA torch, numpy, pillow, scipy, PyYAML and
# prometheus-client, but no package archive. It lacks the node's DICOM stack and MONAI. This
# writes, both git-ignored:
#   .whl/       cp312 manylinux wheels of what it lacks (no dependencies resolved there:
#               pip install --no-index --no-deps), and annoy as its sdist (no wheel exists;
#               scripts/gpu_bench.sh builds it there with the machine's gcc);
#   .gpu-data/  the first 16 chest images of the shared data (the ones bench_e2e's corpus
#               starts with) and their manifest rows: ../shared does not travel; COMMIT, the
#               repository's commit when this ran (the copy there has no git history).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
SHARED=${CXR_SHARED_DATA:-../shared/data}
IMAGES=${GPU_DATA_IMAGES:-16}

# Pure-Python or cp312 wheels; versions as pyproject.toml pins them.
WHEELS=(pydicom==3.0.2 pynetdicom==3.0.4 highdicom==0.28.2 pyjpegls==1.5.1 monai==1.6.1)
rm -rf .whl .gpu-data
mkdir -p .whl .gpu-data
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${WHEELS[@]}"
"$PY" -m pip download -q --no-deps --no-binary=:all: -d .whl annoy==1.17.3

# The images the corpus reads first (scripts.dicom_corpus.chest_image_paths' order), and their rows.
"$PY" - "$SHARED" .gpu-data "$IMAGES" <<'PY'
import csv, shutil, sys
from pathlib import Path
shared, out, count = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
with open(shared / "manifest.csv", newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    rows = sorted((r for r in reader if "-ND" not in r["license"]), key=lambda r: r["image_path"])[:count]
    fields = reader.fieldnames
with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
for row in rows:
    (out / row["image_path"]).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(shared / row["image_path"], out / row["image_path"])
PY
# The device machine's copy has no git history: say which tree the wheelhouse was built beside.
{ git rev-parse HEAD; git status --porcelain | grep -q . && echo dirty || echo clean; } > .gpu-data/COMMIT || true
du -sh .whl .gpu-data
ls .whl
