#!/usr/bin/env bash
# mutate.sh PKG:THRESHOLD[:FILES[:TESTFLAGS]] ... runs gremlins (mutation testing) on each
# package and fails if a package's test efficacy (killed / (killed + lived) mutants) is
# below its threshold. FILES (comma-separated) are the package's files that are not its
# decision core (the shell around it: I/O, parsing, watching); their mutants are not
# generated, but every mutant is still judged by the package's test suite. FILES starting
# with + lists the core's files instead: every other non-test file is left out.
# TESTFLAGS (comma-separated go test flags, e.g. -short,-skip=^TestSlow) narrow the suite
# that judges each mutant when the whole one takes too long per mutant; a narrower suite
# can only kill fewer mutants. Results go to $MUTATE_OUT (default .mutate/), a log and a
# JSON file per package. docs/TESTING.md lists the mutants that live and why.
set -euo pipefail
cd "$(dirname "$0")/.."
GREMLINS_VERSION=v0.6.0
out=${MUTATE_OUT:-.mutate}
workers=${MUTATE_WORKERS:-2}
gobin=$(go env GOPATH)/bin
if ! go version -m "$gobin/gremlins" 2>/dev/null | grep -q "gremlins.*$GREMLINS_VERSION"; then
	go install "github.com/go-gremlins/gremlins/cmd/gremlins@$GREMLINS_VERSION"
fi
mkdir -p "$out"
fail=0
summary=()
for spec in "$@"; do
	IFS=: read -r pkg min excl testflags <<<"$spec"
	args=(-E 'crashpoint/') # the crash-test hook, compiled in only under its build tag
	if [[ $excl == +* ]]; then
		core=",${excl#+},"
		args+=(-E '/') # subpackages (gremlins walks the directory)
		excl=
		for f in "${pkg#./}"/*.go; do
			f=${f##*/}
			[[ $f == *_test.go || $core == *",$f,"* ]] || excl+="$f,"
		done
	fi
	for f in ${excl//,/ }; do args+=(-E "(^|/)${f//./\\.}\$"); done
	name=$(echo "${pkg#./}" | tr / _)
	start=$(date +%s)
	GOFLAGS="$(go env GOFLAGS) ${testflags//,/ }" "$gobin/gremlins" unleash "$pkg" \
		--workers "$workers" --timeout-coefficient 10 \
		"${args[@]}" -o "$out/$name.json" >"$out/$name.log" 2>&1 || true
	secs=$(( $(date +%s) - start ))
	read -r eff killed lived notcov timedout < <(python3 - "$out/$name.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
timed_out = sum(m["status"] == "TIMED OUT" for f in r.get("files", []) for m in f["mutations"])
print(f'{r["test_efficacy"]:.1f} {r["mutants_killed"]} {r["mutants_lived"]} {r["mutants_not_covered"]} {timed_out}')
PY
)
	line=$(printf '%-16s efficacy %5s %%  killed %4s  lived %3s  not covered %3s  timed out %3s  %4ds  (min %s %%)' \
		"$pkg" "$eff" "$killed" "$lived" "$notcov" "$timedout" "$secs" "$min")
	if python3 -c "import sys; sys.exit(0 if float('$eff') >= float('$min') else 1)"; then
		summary+=("ok    $line")
	else
		summary+=("FAIL  $line")
		fail=1
	fi
	grep -E '^ +LIVED' "$out/$name.log" | sed "s|^|  $pkg: |" || true
done
printf '%s\n' "${summary[@]}"
exit $fail
