#!/usr/bin/env bash
# Installs Debian's dataset-fashion-mnist (the four official IDX files in
# /usr/share/datasets/fashion-mnist) where apt-get is allowed. Elsewhere it
# says so and exits 0: bnjax.data then downloads the official files on first use.
set -uo pipefail
if [ -e /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ]; then
  exit 0
fi
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q dataset-fashion-mnist \
    || { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; } \
    && exit 0
fi
echo "note: no local Fashion-MNIST (apt-get not allowed or failed); bnjax downloads it" \
     "on first use, and tests/test_real_data.py skips."
