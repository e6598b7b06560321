#!/usr/bin/env bash
# Make sure Fashion-MNIST (Debian package dataset-fashion-mnist) is installed.
# Where it cannot be installed (no root, no apt), say so: the demo falls back
# to scikit-learn's digits and the tests that need Fashion-MNIST skip, except
# under CI=true where its absence is an error.
set -u
DIR=/usr/share/datasets/fashion-mnist
if [ -f "$DIR/t10k-images-idx3-ubyte.gz" ] || [ -f "$DIR/t10k-images-idx3-ubyte" ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; fi
fi
if command -v apt-get >/dev/null && { [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; }; then
  echo "installing dataset-fashion-mnist (Debian package) ..."
  $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
    { $SUDO apt-get update -qq >/dev/null 2>&1 && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; }
fi
if [ -d "$DIR" ]; then
  echo "Fashion-MNIST installed at $DIR"
  exit 0
fi
echo "NOTE: could not install dataset-fashion-mnist; the demo will use scikit-learn's 8x8 digits instead." >&2
if [ "${CI:-}" = "true" ]; then
  echo "error: CI needs Fashion-MNIST at $DIR" >&2
  exit 1
fi
exit 0
