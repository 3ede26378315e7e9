#!/usr/bin/env bash
# Chromium for the browser tests (tests/html/test_html_browser.py), from the distribution's packages.
# Idempotent and quick when a Chromium is already there. Where it cannot install one (not root, no
# apt-get, no package mirror) it says why and exits 0: those tests then skip, naming the reason.
set -uo pipefail
for name in chromium chromium-browser google-chrome; do
  if command -v "$name" >/dev/null 2>&1; then
    exit 0
  fi
done
if [ -n "${KERNEL_FX_CHROMIUM:-}" ] && [ -x "$KERNEL_FX_CHROMIUM" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_chromium.sh: no apt-get here; install Chromium yourself (or set KERNEL_FX_CHROMIUM), else the browser tests skip" >&2
  exit 0
fi
sudo=()
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
  else
    echo "install_chromium.sh: not root and no passwordless sudo; the browser tests will skip" >&2
    exit 0
  fi
fi
echo "install_chromium.sh: installing chromium from the Debian packages" >&2
export DEBIAN_FRONTEND=noninteractive
if ! { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null; }; then
  echo "install_chromium.sh: apt-get could not install chromium; the browser tests will skip" >&2
fi
exit 0
