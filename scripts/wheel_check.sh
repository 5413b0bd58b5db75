#!/usr/bin/env bash
# The install users make: `pip install .` (a wheel, not editable) into a fresh venv; then, from a folder outside
# the repository, every command's --help and a small demo against the installed package.
# PCDMS_TORCH overrides the torch pin, as in setup_env.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
TORCH_SPEC="${PCDMS_TORCH:-torch==2.14.1 torchvision==0.29.1}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
start=$SECONDS
"$PY" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install -q --upgrade pip
# shellcheck disable=SC2086
"$VPY" -m pip install -q $TORCH_SPEC
"$VPY" -m pip install -q "$ROOT"
echo "[wheel] installed in $((SECONDS - start)) s"
cd "$WORK"
"$VPY" - "$ROOT" <<'PY'
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pcdms_aug
from pcdms_aug.cli.main import COMMANDS
from pcdms_aug.config.loading import CONFIG_ROOT

root = Path(sys.argv[1]).resolve()
for path in (Path(pcdms_aug.__file__), CONFIG_ROOT):
    assert root not in path.resolve().parents, f"{path} is inside the repository: not the installed package"
assert (CONFIG_ROOT / "tiny" / "pipeline.yaml").is_file(), f"no configs in the wheel ({CONFIG_ROOT})"
names = sorted(COMMANDS) + sorted(ep.name for ep in entry_points(group="pcdms_aug.commands"))
Path("commands.txt").write_text("\n".join(names) + "\n")
PY
while read -r cmd; do
  "$WORK/venv/bin/pcdms-aug" "$cmd" --help > /dev/null
done < commands.txt
echo "[wheel] --help of $(wc -l < commands.txt) commands"
"$WORK/venv/bin/pcdms-aug" demo --out "$WORK/demo" --seeds 0 --epochs 1 --train-ids 8 --test-ids 6 --fraction 0.5 \
  --metric-pairs 6 --views 1 --steps 2 > "$WORK/demo.log" 2>&1 || { tail -30 "$WORK/demo.log"; exit 1; }
test -s "$WORK/demo/report.md"
echo "[wheel] pip install . + every --help + a small demo, outside the repository: $((SECONDS - start)) s"
