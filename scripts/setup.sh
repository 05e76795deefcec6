#!/usr/bin/env bash
# One-shot set-up on a fresh Debian 12 machine: DICOM peers (apt) and the Python venv.
# Idempotent: a second run only checks. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# DCMTK (storescu, dcmdump, dsrdump), dicom3tools (dciodvfy), Orthanc (the test PACS) with its
# DICOMweb plugin, Chromium plus Node for the OHIF viewer checks (testkit/viewer.py), and
# DejaVu Sans (the banner font of the summary image), Prometheus (scrapes the node's /metrics in
# tests) and systemd (systemd-analyze verifies the shipped unit).
apt_packages=(dcmtk dicom3tools orthanc orthanc-dicomweb chromium nodejs curl openssl fonts-dejavu-core prometheus systemd)
missing=()
for p in "${apt_packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
# Debian's nodejs comes without npm; NodeSource's nodejs bundles it (and conflicts with Debian's npm).
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: need root to apt-get install ${missing[*]}" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# annoy ships only as an sdist and adds -march=native by default; build it portable.
export ANNOY_COMPILER_ARGS="-D_CRT_SECURE_NO_WARNINGS,-fpermissive,-O3,-ffast-math,-fno-associative-math,-DANNOYLIB_MULTITHREADED_BUILD,-std=c++14"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# Pinned CPU torch first: anything unpinned would pull a CUDA build of several GB.
.venv/bin/pip install -q --no-cache-dir torch==2.13.0
# ray: the Serve deployment of the models, for its tests and scripts/bench_ray.py (docs/scale_out.md).
.venv/bin/pip install -q --no-cache-dir -e ".[test,ray]"
# The ONNX export of the shipped networks for [inference] runtime (the node makes it on first start otherwise).
.venv/bin/python -m scripts.export_cpu_runtime || echo "setup: ONNX export failed; the node will run PyTorch" >&2

# The OHIF v3 viewer harness: puppeteer-core and the pinned @ohif/app dist (viewer/install.sh).
bash viewer/install.sh
