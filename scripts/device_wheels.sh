#!/usr/bin/env bash
# The Python packages that fedcodec's training and coding need and that the GPU machine's image lacks, as wheels
# for its Python 3.12 (x86-64), into .whl/ (git-ignored; carried to the machine, which reaches no registry).
# The image has torch, numpy 2, scipy, pillow, matplotlib, pandas, requests, safetensors, torch-geometric, ...;
# these six are fedcodec's imports that it lacks (CompressAI, MONAI, MS-SSIM, BD-rate, the DICOM and NIfTI readers
# for real data); pretraining, adaptation, coding and evaluation ran with them in a Python 3.12 environment holding
# only the image's packages (2026-11-28; README.md, 'The next round is prepared for a GPU'). PyAV (x265) is left
# out: its wheel would overflow what travels. Versions: this project's.
# Usage: bash scripts/device_wheels.sh     (then carry .whl; scripts/device_env.sh installs them there)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
PKGS=(compressai==1.2.8 monai==1.6.1 pytorch-msssim==1.0.0 bjontegaard==1.3.0 pydicom==3.0.2 nibabel==5.4.2)
PY=${PYTHON:-python3}
PIP_CONSTRAINT= "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl "${PKGS[@]}"
ls -la .whl
du -sh .whl
