#!/usr/bin/env bash
# Build the nnU-Net v2 benchmark peer in its own virtual environment (never the project venv)
# and install the wall-clock trainer variant into it (nnU-Net only finds trainer classes
# inside its own package). CPU torch is kept by a constraints file holding torch==2.13.0.
# Usage: bash benchmarks/nnunet_setup.sh     Environment: NNUNET_VENV (default
# /tmp/peer_nnunet), PYTHON (default python3; 3.11), NNUNET_VERSION (default 2.8.1).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${NNUNET_VENV:-/tmp/peer_nnunet}"
PYTHON="${PYTHON:-python3}"
VERSION="${NNUNET_VERSION:-2.8.1}"

if ! "$VENV/bin/python" -c "import nnunetv2" 2>/dev/null; then
  "$PYTHON" -m venv "$VENV"
  constraints="$VENV/constraints.txt"
  echo "torch==2.13.0" > "$constraints"
  "$VENV/bin/pip" install -q -c "$constraints" "torch==2.13.0"
  "$VENV/bin/pip" install -q -c "$constraints" "nnunetv2==$VERSION"
fi
site="$("$VENV/bin/python" -c 'import nnunetv2, os; print(os.path.dirname(nnunetv2.__file__))')"
# nnU-Net looks a trainer up by importing its package's modules in order: top-level modules
# first, then sub-packages. The PyPI torchvision that timm pulls in is a CUDA build that
# cannot load beside CPU torch, and the `primus` sub-package imports timm, so the variant
# sits at the top level, where the search finds it (as it finds the default trainer) before
# reaching `primus`.
cp "$HERE/nnunet_trainer_wallclock.py" "$site/training/nnUNetTrainer/nnUNetTrainerWallClock.py"
"$VENV/bin/python" - <<'PY'
import importlib.metadata as m

import torch
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

cls = recursive_find_trainer_class_by_name("nnUNetTrainerWallClock")
print("nnunetv2", m.version("nnunetv2"), "torch", torch.__version__, cls.__module__)
PY
