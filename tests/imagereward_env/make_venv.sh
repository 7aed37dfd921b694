#!/usr/bin/env bash
# Build the separate venv the real-ImageReward tests run in (tests/test_imagereward_real.py).
# It holds the WebUI v1.10.1 pins that ImageReward's model meets (transformers 4.30.2, timm,
# torchvision beside torch, numpy < 2) and installs image-reward 1.5 the way install.py does:
# `--no-deps --target <extension>/deps`. The shared test venv (.ci/venv) is never touched.
#
# Usage: tests/imagereward_env/make_venv.sh [VENV [DEPS]]   (defaults .ci/ir-venv, .ci/ir-deps)
# Then:  DATO_IMAGEREWARD_DEPS=DEPS VENV/bin/python -m pytest -q -p no:cacheprovider tests/test_imagereward_real.py
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${1:-.ci/ir-venv}"
DEPS="${2:-.ci/ir-deps}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip "setuptools==80.9.0" wheel
"$PY" -m pip install -q -r tests/imagereward_env/requirements.txt
"$PY" -m pip install -q --no-deps stable-diffusion-sdkit
# image-reward + fairscale, --no-deps --target DEPS, by install.py itself (as the WebUI runs it)
"$PY" tests/imagereward_env/install_deps.py "$DEPS"
