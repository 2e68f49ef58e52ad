#!/usr/bin/env bash
# Lint, then the whole test suite (unit tests and the real end-to-end flows).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
