#!/usr/bin/env bash
# A separate environment with the original tomesd 0.1.3 (both import as `tomesd`), for the comparison in
# scripts/benchmark.py --compare-013. Same pinned torch/diffusers as ./.venv (constraints.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
[ -x .venv-tomesd013/bin/python ] || "$python" -m venv .venv-tomesd013
pip=(.venv-tomesd013/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt)
"${pip[@]}" torch
"${pip[@]}" diffusers transformers accelerate safetensors "tomesd==0.1.3"
