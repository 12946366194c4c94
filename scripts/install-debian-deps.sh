#!/usr/bin/env bash
# Installs the Debian packages that Kalkan's tests and benchmarks drive, only when missing.
set -euo pipefail
packages=(nginx-light varnish wrk slowhttptest chromium nftables iproute2 pebble php-cli logrotate valgrind redis-server
          nghttp2-client)
missing=()
# The machine image ships Node.js with npm (for the HTTP caching test suite); add Debian's only if absent.
command -v npm >/dev/null || packages+=(nodejs npm)
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "missing Debian packages: ${missing[*]} (run as root or install them yourself)" >&2
    exit 1
  fi
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
