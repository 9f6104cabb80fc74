#!/usr/bin/env bash
# Installs what `make bench` needs beyond `make deps`, only when something is missing:
# Debian nginx, wrk and curl, and the delta peers zstd, xdelta3 and bsdiff (apt-get),
# libonnxruntime.so of npm onnxruntime-node 1.23.2 and 1.24.3 in bench/.work/ort/ (the
# delta section's pair (c)), and npm onnxruntime-node@1.24.3 in bench/node/
# (the Node.js inference peer). Idempotent: a machine that has it all does nothing and
# needs no network. Node.js itself comes from Debian (nodejs, npm) when absent.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
need=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for p in nginx wrk curl zstd xdelta3 bsdiff; do
  have "$p" || need+=("$p")
done
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  echo "bench deps: installing Debian packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The Node.js peer: onnxruntime-node pinned to the ONNX Runtime release Edgeward uses. Its CPU
# binaries are in the npm package; ONNXRUNTIME_NODE_INSTALL=skip skips the CUDA download (nuget).
if [ ! -e "$here/node/node_modules/onnxruntime-node/package.json" ] ||
   ! grep -q '"version": "1.24.3"' "$here/node/node_modules/onnxruntime-node/package.json"; then
  echo "bench deps: npm install onnxruntime-node@1.24.3 in bench/node"
  (cd "$here/node" && ONNXRUNTIME_NODE_INSTALL=skip npm install --no-audit --no-fund --loglevel=error onnxruntime-node@1.24.3)
fi
# The delta section's pair (c): the linux x64 ONNX Runtime library of two releases.
for v in 1.23.2 1.24.3; do
  lib="$here/.work/ort/$v/libonnxruntime.so.1"
  if [ ! -s "$lib" ]; then
    echo "bench deps: npm pack onnxruntime-node@$v (for its linux x64 libonnxruntime.so)"
    mkdir -p "$here/.work/ort/$v"
    (cd "$here/.work/ort/$v" && npm pack --silent "onnxruntime-node@$v" >/dev/null &&
      tar xzf "onnxruntime-node-$v.tgz" package/bin/napi-v6/linux/x64/libonnxruntime.so.1 &&
      mv package/bin/napi-v6/linux/x64/libonnxruntime.so.1 . && rm -rf package "onnxruntime-node-$v.tgz")
  fi
done
