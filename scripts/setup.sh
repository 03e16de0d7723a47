#!/usr/bin/env bash
# Create .venv with the CPU build of torch and the package (editable) with its dev and onnx extras.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# Pin torch first so that no CUDA build is pulled in on a CPU machine.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev,onnx]"
