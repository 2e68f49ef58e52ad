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
want=$(sha256sum requirements.lock requirements-nodeps.lock pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing the pinned dependencies of requirements.lock into .venv (first run: minutes)"
  # (pip warns about optional local package mirrors that are absent; those lines are noise)
  .venv/bin/python -m pip install --quiet --disable-pip-version-check uv==0.13.8 \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  .venv/bin/uv pip install --quiet --python .venv/bin/python -r requirements.lock
  .venv/bin/uv pip install --quiet --python .venv/bin/python --no-deps -r requirements-nodeps.lock
  .venv/bin/uv pip install --quiet --python .venv/bin/python --no-deps -e .
  # Bytecode, compiled once here: where PYTHONDONTWRITEBYTECODE is set (containers, CI) Python
  # never caches it itself, and every start would compile TensorFlow's sources again.
  echo "setup: compiling bytecode (once)"
  .venv/bin/python -m compileall -q -j 0 .venv/lib flows tasks bench >/dev/null 2>&1 || true
  echo "$want" > "$stamp"
fi
