#!/usr/bin/env bash
# Command 2 of 2: the whole test suite (lint, format check, pytest). Installs first if needed.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/install.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# two workers: most tests are single-threaded Python, and the suite on one of this host's 2 cores takes 15 minutes
.venv/bin/python -m pytest -q -n 2 "$@"
