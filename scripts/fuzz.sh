#!/usr/bin/env bash
# fuzz.sh PKG FUNC FUZZTIME MINIMIZETIME: runs one fuzz target for FUZZTIME.
#
# Go 1.26's fuzzing coordinator can report a bare "context deadline exceeded" as a
# failure when -fuzztime ends while a worker is still mid-execution (go.dev/issue/75804,
# fixed in Go 1.27); on a loaded machine it happens now and then. Such a run found
# nothing: a real finding prints "Failing input written to" (and writes the input
# under testdata/fuzz). Only that exact signature is retried, once; any other failure,
# and a second failure of any kind, fails.
set -uo pipefail
pkg=$1 fn=$2 fuzztime=$3 minimize=$4
go=${GO:-go}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for attempt in 1 2; do
	echo "fuzz $pkg $fn ($fuzztime)"
	"$go" test "$pkg" -run '^$' -fuzz "^$fn\$" -fuzztime "$fuzztime" -fuzzminimizetime "$minimize" 2>&1 | tee "$log"
	rc=${PIPESTATUS[0]}
	if [ "$rc" -eq 0 ]; then
		exit 0
	fi
	if [ "$attempt" -eq 1 ] && grep -q -- "--- FAIL: $fn " "$log" && grep -qx '    context deadline exceeded' "$log" &&
		! grep -q 'Failing input written to' "$log" && ! grep -q -i 'panic' "$log"; then
		echo "fuzz $pkg $fn: the Go coordinator's end-of-fuzztime race (go.dev/issue/75804), no input found: running it again"
		continue
	fi
	exit "$rc"
done
