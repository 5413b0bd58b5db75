#!/usr/bin/env bash
# Create .venv in the repository root (if missing) and install the package with every dependency.
# A second run only checks a stamp and returns in seconds. Source it: it leaves the venv active.
# PCDMS_TORCH overrides the torch pin (GPU users: e.g. PCDMS_TORCH="torch torchvision" or a CUDA index).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
TORCH_SPEC="${PCDMS_TORCH:-torch==2.14.1 torchvision==0.29.1}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.pcdms-aug-installed"
WANT="$(cat "$ROOT/setup.cfg" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16) $TORCH_SPEC"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && "$VENV/bin/python" -c "import pcdms_aug, torch, torchreid" 2>/dev/null; then
  echo "[setup] $VENV is up to date"
else
  echo "[setup] installing into $VENV (first run: several minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install -q $TORCH_SPEC
  "$VENV/bin/python" -m pip install -q -e "$ROOT[test]"
  echo "$WANT" > "$STAMP"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
