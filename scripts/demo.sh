#!/usr/bin/env bash
# Set up .venv (see setup_env.sh), then run the demo on the embedded synthetic Market-1501.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec pcdms-aug demo "$@"
