#!/usr/bin/env bash
# Create .venv and install the locked dependencies and transferops itself (idempotent: a
# second run with the same lock file installs nothing).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=.venv/.transferops-lock
want=$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing the pinned dependencies of requirements.lock into .venv (first run: minutes)"
  # (pip warns about optional local package mirrors that are absent; those lines are noise)
  .venv/bin/python -m pip install --quiet --disable-pip-version-check uv==0.13.8 \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  .venv/bin/uv pip install --quiet --python .venv/bin/python -r requirements.lock
  .venv/bin/uv pip install --quiet --python .venv/bin/python --no-deps -e .
  echo "$want" > "$stamp"
fi
