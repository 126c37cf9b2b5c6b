#!/usr/bin/env bash
# Installs the Debian packages the build, the tests or the benchmarks need, those missing only:
#   nasm      assembles libjpeg-turbo's SIMD code when `wit-jpeg` is built (without it the build
#             still works, and JPEGs decode 1.6× and encode 4.5× slower);
#   chromium  headless, for the `wit stats` HTML report test (it opens report.html and checks
#             for console errors and a non-blank screenshot).
# Usage: bash scripts/setup-debian.sh nasm chromium. Needs root (or sudo) and the Debian mirrors.
set -euo pipefail
missing=()
for want in "$@"; do
  case "$want" in
    nasm) command -v nasm >/dev/null || missing+=(nasm) ;;
    chromium) [ -x /usr/bin/chromium ] || missing+=(chromium fonts-dejavu-core) ;;
    *) echo "setup-debian.sh: unknown package '$want' (known: nasm, chromium)" >&2; exit 2 ;;
  esac
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
for want in "$@"; do
  case "$want" in
    nasm) echo "nasm ready: $(nasm -v)" ;;
    chromium) echo "chromium ready: $(/usr/bin/chromium --version 2>/dev/null || echo installed)" ;;
  esac
done
