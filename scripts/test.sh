#!/usr/bin/env bash
# Lint, then the whole test suite (unit tests and the real end-to-end flows), on every core:
# pytest-xdist workers (TEST_WORKERS, default one per core), each test file on one worker (a
# file's module fixtures, such as the end-to-end project, are built once).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -n "${TEST_WORKERS:-auto}" --dist loadfile --durations=25 "$@"
