#!/usr/bin/env bash
# Make sure Prometheus (Debian package prometheus: the real prometheus and promtool binaries) is installed,
# for tests/test_prometheus.py. Where it cannot be installed (no root, no apt) those tests skip with the
# reason, except under CI=true where its absence is an error.
set -u
if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; fi
fi
if command -v apt-get >/dev/null && { [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; }; then
  echo "installing prometheus (Debian package: prometheus, promtool) ..."
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 || \
    { $SUDO apt-get update -qq >/dev/null 2>&1 && \
      $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1; }
fi
if command -v promtool >/dev/null; then
  exit 0
fi
echo "NOTE: could not install prometheus; tests/test_prometheus.py will skip." >&2
if [ "${CI:-}" = "true" ]; then
  echo "error: CI needs promtool (Debian package prometheus)" >&2
  exit 1
fi
exit 0
