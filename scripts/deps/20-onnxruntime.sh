#!/usr/bin/env bash
# Installs the pinned ONNX Runtime shared library for edgeward-runtime development and tests:
#   $DEPS_DIR/onnxruntime/lib/libonnxruntime.so.1   (the Makefile's ONNXRUNTIME_LIB)
# It comes from the npm package onnxruntime-node@1.24.3 (ONNX Runtime 1.24.3, C API 24),
# whose tarball is checked against a pinned sha256 before anything is extracted.
#
# Architecture: linux x86_64 uses package/bin/napi-v6/linux/x64/libonnxruntime.so.1;
# linux aarch64 uses package/bin/napi-v6/linux/arm64/libonnxruntime.so.1 from the same
# tarball (same pinned sha256). ORT_ARCH=x64|arm64 overrides the detection.
#
# Idempotent: when the library is present and its recorded tarball hash matches, it exits
# at once without network access.
#
# Usage: scripts/deps/20-onnxruntime.sh [DEPS_DIR]   (default ./.deps)
set -euo pipefail

DEPS_DIR="${1:-./.deps}"
ORT_NPM_VERSION="1.24.3"
ORT_NPM_SHA256="aa1bb5fa261ea68de05dd53efbba210cd7adf2d2850f4c3a201054c74cc78040"

case "${ORT_ARCH:-$(uname -m)}" in
  x86_64|amd64|x64) arch=x64 ;;
  aarch64|arm64) arch=arm64 ;;
  *) echo "deps: onnxruntime: unsupported architecture $(uname -m)" >&2; exit 1 ;;
esac

dest="$DEPS_DIR/onnxruntime/lib"
lib="$dest/libonnxruntime.so.1"
stamp="$DEPS_DIR/onnxruntime/INSTALLED"
want="onnxruntime-node@$ORT_NPM_VERSION $ORT_NPM_SHA256 $arch"

if [ -s "$lib" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

command -v npm >/dev/null || { echo "deps: onnxruntime: npm is needed to fetch onnxruntime-node" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "deps: fetching onnxruntime-node@$ORT_NPM_VERSION ($arch)"
(cd "$tmp" && npm pack --silent "onnxruntime-node@$ORT_NPM_VERSION" >/dev/null)
tgz="$tmp/onnxruntime-node-$ORT_NPM_VERSION.tgz"
got="$(sha256sum "$tgz" | cut -d' ' -f1)"
if [ "$got" != "$ORT_NPM_SHA256" ]; then
  echo "deps: onnxruntime: sha256 mismatch for $(basename "$tgz"): got $got, want $ORT_NPM_SHA256" >&2
  exit 1
fi
member="package/bin/napi-v6/linux/$arch/libonnxruntime.so.1"
tar -xzf "$tgz" -C "$tmp" "$member"
mkdir -p "$dest"
install -m 0644 "$tmp/$member" "$lib.tmp"
mv -f "$lib.tmp" "$lib"
echo "$want" > "$stamp"
echo "deps: installed $lib"
