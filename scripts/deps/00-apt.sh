#!/usr/bin/env bash
# Installs the Debian packages the build and tests need, only when one is missing.
# Idempotent: a machine that has them all does nothing and needs no network.
set -euo pipefail
need=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for p in $(cat "$(dirname "$0")/apt-packages.txt" | sed 's/#.*//'); do
  have "$p" || need+=("$p")
done
[ ${#need[@]} -eq 0 ] && exit 0
echo "deps: installing Debian packages: ${need[*]}"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
