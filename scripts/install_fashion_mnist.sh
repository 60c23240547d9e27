#!/usr/bin/env bash
# Installs Debian's dataset-fashion-mnist (the four official IDX files in
# /usr/share/datasets/fashion-mnist) where apt-get is allowed.
#   scripts/install_fashion_mnist.sh            elsewhere: a note, exit 0 (bnjax.train.data
#                                               then downloads the official files)
#   scripts/install_fashion_mnist.sh --require  exit 1 when the files are not there
#                                               afterwards (CI: the real-data tests
#                                               must run, not skip)
set -uo pipefail
require=0
[ "${1:-}" = "--require" ] && require=1
folder=/usr/share/datasets/fashion-mnist
complete() {
  for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz \
           t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
    [ -s "$folder/$f" ] || return 1
  done
}
complete && exit 0
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q dataset-fashion-mnist \
    || { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; }
fi
complete && exit 0
if [ "$require" = 1 ]; then
  echo "error: Debian's dataset-fashion-mnist could not be installed into $folder;" \
       "the real-data tests need it." >&2
  exit 1
fi
echo "note: no local Fashion-MNIST (apt-get not allowed or failed); bnjax downloads it" \
     "on first use, and tests/test_real_data.py skips."
