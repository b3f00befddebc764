#!/usr/bin/env bash
# Command 2 of 2: the whole test suite (lint, format check, pytest). Installs first if needed.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/install.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q "$@"
