#!/usr/bin/env bash
# Installs Debian's headless-capable `chromium` for the `wit stats` HTML report test (it opens
# report.html and checks for console errors and a non-blank screenshot). Idempotent: does nothing
# when /usr/bin/chromium already exists. Needs root (or sudo) and the Debian package mirrors.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  echo "chromium ready: $(/usr/bin/chromium --version 2>/dev/null || echo installed)"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core
echo "chromium ready: $(/usr/bin/chromium --version 2>/dev/null || echo installed)"
