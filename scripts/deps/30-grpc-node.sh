#!/usr/bin/env bash
# Installs the independent gRPC client of cmd/edgeward-runtime's TestGRPCNodeClient:
# npm @grpc/grpc-js 1.14.7 and @grpc/proto-loader 0.8.1 (package-lock.json) into
# cmd/edgeward-runtime/testdata/grpcnode/node_modules. Node.js and npm come from Debian
# (nodejs, npm) when absent (as in bench/deps.sh; a machine may have another build of
# Node.js, whose npm is not a Debian package). Idempotent: nothing to do, and no
# network, once installed.
set -euo pipefail
need=()
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  echo "deps: installing Debian packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
dir="$(cd "$(dirname "$0")/../.." && pwd)/cmd/edgeward-runtime/testdata/grpcnode"
if [ -e "$dir/node_modules/@grpc/grpc-js/package.json" ] &&
   grep -q '"version": "1.14.7"' "$dir/node_modules/@grpc/grpc-js/package.json" &&
   grep -q '"version": "0.8.1"' "$dir/node_modules/@grpc/proto-loader/package.json"; then
  exit 0
fi
echo "deps: npm ci @grpc/grpc-js@1.14.7 @grpc/proto-loader@0.8.1 in $dir"
(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
