#!/usr/bin/env bash
# The main job on its embedded defaults: demo data (Fashion-MNIST, versioned with DVC),
# a pretrained backbone, then validate -> split -> select -> finetune -> evaluate -> register.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ "$(id -u)" = 0 ] \
   && command -v apt-get >/dev/null; then
  echo "demo: installing Debian's dataset-fashion-mnist (offline copy of the data set)"
  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; }) \
    || echo "demo: could not install dataset-fashion-mnist; falling back to the Keras download"
fi
exec .venv/bin/transferops demo "$@"
