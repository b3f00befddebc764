#!/usr/bin/env bash
# Create .venv and install simulacra with every env and tool. torch is pinned and installed first, so
# pip never resolves a CUDA build. Re-running is cheap: it skips work when pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "simulacra needs Python >= 3.11 (found $("$PY" --version))" >&2; exit 1; }
stamp=.venv/.simulacra-installed
want=$(cat pyproject.toml scripts/install.sh | "$PY" -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
export PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[all]"
.venv/bin/python -c "import torch, simulacra; print('installed simulacra', simulacra.__version__, 'with torch', torch.__version__)"
echo "$want" > "$stamp"
