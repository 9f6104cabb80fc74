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
#
# A mutant's tests time out after MUTATE_TIMEOUT_COEFFICIENT (default 10) times the
# unmutated suite's time, measured once at the start: raise it when the machine's load
# rises during a run (a timed-out mutant is neither killed nor lived, so it hides).
#
# MUTATE_UNCOVERED=1 judges, after gremlins, the mutants it left "not covered" (those in a
# `case` expression are run by the tests but never judged by gremlins 0.6.0), one at a
# time with go test -overlay (scripts/mutate-judge.py); they then count in the efficacy.
#
# MUTATE_DIFF=REF (make mutate-diff) mutates only the lines changed since the merge base
# of REF and the working tree (git diff --merge-base REF), and skips a core none of whose
# mutated files changed. gremlins' own --diff cannot match its mutants' paths with the
# diff's when it mutates a package below the module root; scripts/mutate-git.sh, as git
# on gremlins' PATH, makes that diff relative to the package.
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
diffref=${MUTATE_DIFF:-}
if [[ -n $diffref ]]; then
	git rev-parse --verify -q "$diffref^{commit}" >/dev/null || { echo "MUTATE_DIFF=$diffref: not a commit" >&2; exit 2; }
	wrapdir=$(mktemp -d)
	trap 'rm -rf "$wrapdir"' EXIT
	ln -s "$PWD/scripts/mutate-git.sh" "$wrapdir/git"
fi
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
	envs=()
	if [[ -n $diffref ]]; then
		mutated=()
		for f in "${pkg#./}"/*.go; do
			[[ $f == *_test.go || ",$excl," == *",${f##*/},"* ]] || mutated+=("$f")
		done
		if [[ -z $(git diff --merge-base "$diffref" --name-only -- "${mutated[@]}") ]]; then
			summary+=("skip  $(printf '%-16s' "$pkg") none of its mutated files changed since $diffref")
			continue
		fi
		args+=(--diff "$diffref")
		envs=(PATH="$wrapdir:$PATH" MUTATE_REAL_GIT="$(command -v git)" MUTATE_REL="${pkg#./}/")
	fi
	start=$(date +%s)
	env "${envs[@]}" GOFLAGS="$(go env GOFLAGS) ${testflags//,/ }" "$gobin/gremlins" unleash "$pkg" \
		--workers "$workers" --timeout-coefficient "${MUTATE_TIMEOUT_COEFFICIENT:-10}" \
		"${args[@]}" -o "$out/$name.json" >"$out/$name.log" 2>&1 || true
	if [[ ${MUTATE_UNCOVERED:-} == 1 ]]; then
		# gremlins leaves a mutant in a `case` expression "not covered" (it reads Go's
		# coverage profile, which counts the clause's body): judge those with go test
		# -overlay, which changes no file (scripts/mutate-judge.py).
		env GOFLAGS="$(go env GOFLAGS) ${testflags//,/ }" python3 scripts/mutate-judge.py \
			--out "$out/$name.json" "$pkg" "$out/$name.json" >>"$out/$name.log" 2>&1 || true
	fi
	secs=$(( $(date +%s) - start ))
	read -r eff killed lived notcov timedout < <(python3 - "$out/$name.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
timed_out = sum(m["status"] == "TIMED OUT" for f in r.get("files", []) for m in f["mutations"])
# No mutant judged (changed lines without a mutable operator): nothing to fail.
eff = f'{r["test_efficacy"]:.1f}' if r["mutants_killed"] + r["mutants_lived"] else "n/a"
print(f'{eff} {r["mutants_killed"]} {r["mutants_lived"]} {r["mutants_not_covered"]} {timed_out}')
PY
)
	line=$(printf '%-16s efficacy %5s %%  killed %4s  lived %3s  not covered %3s  timed out %3s  %4ds  (min %s %%)' \
		"$pkg" "$eff" "$killed" "$lived" "$notcov" "$timedout" "$secs" "$min")
	if [[ $eff == n/a ]] || python3 -c "import sys; sys.exit(0 if float('$eff') >= float('$min') else 1)"; then
		summary+=("ok    $line")
	else
		summary+=("FAIL  $line")
		fail=1
	fi
	grep -E '^ +LIVED' "$out/$name.log" | sed "s|^|  $pkg: |" || true
done
printf '%s\n' "${summary[@]}"
exit $fail
