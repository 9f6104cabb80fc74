#!/usr/bin/env python3
"""mutate-judge.py judges mutants of a gremlins report itself, one at a time, with
`go test -overlay`: the mutated file is written to a temporary directory and replaces the
package's file only in the build, so no source file is ever changed (a run that is killed
leaves nothing behind in the tree).

    mutate-judge.py [--status S]... [--only FILE:LINE:COL:TYPE]... [--timeout SECS]
                    [--out REPORT] PKG REPORT.json

Which mutants:
  --status S   the report's mutants with status S ("NOT COVERED" when none is given, and
               "LIVED" to judge survivors again after new tests: an automated "after").
  --only M     these mutants instead (FILE relative to PKG, as in the report), e.g.
               --only decode.go:116:30:CONDITIONALS_BOUNDARY; M needs no report entry.

gremlins 0.6.0 marks a mutant "not covered" when Go's coverage profile does not count its
line, and the profile counts a `case` clause's body, not its expression: a mutant in a
`case` expression is never judged, however often the tests run it (docs/TESTING.md). This
judges it the way gremlins judges a covered one: the package's tests (GOFLAGS narrow them
as in MUTATE_CORES) pass -> LIVED; fail -> KILLED; do not build -> NOT VIABLE; run longer
than --timeout (default: MUTATE_TIMEOUT_COEFFICIENT, 10, times the unmutated run) ->
TIMED OUT.

Each judged mutant prints one line like gremlins' log ("  KILLED CONDITIONALS_NEGATION at
decode.go:109:10"); --out writes the report with those statuses and its counts and
efficacy recomputed (gremlins' fields), which scripts/mutate.sh reads.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

# gremlins 0.6.0's token mutations (internal/engine/mappings.go), the mutators it enables
# by default and the others, by the operator's text.
MUTATIONS = {
    "ARITHMETIC_BASE": {"+": "-", "*": "/", "/": "*", "%": "*", "-": "+"},
    "CONDITIONALS_BOUNDARY": {">=": ">", ">": ">=", "<=": "<", "<": "<="},
    "CONDITIONALS_NEGATION": {"==": "!=", ">=": "<", ">": "<=", "<=": ">", "<": ">=", "!=": "=="},
    "INCREMENT_DECREMENT": {"--": "++", "++": "--"},
    "INVERT_NEGATIVES": {"-": "+"},
    "INVERT_LOGICAL": {"&&": "||", "||": "&&"},
    "INVERT_ASSIGNMENTS": {"+=": "-=", "*=": "/=", "/=": "*=", "-=": "+="},
    "INVERT_BITWISE": {"&": "|", "|": "&", "^": "&", "&^": "&", "<<": ">>", ">>": "<<"},
}
# Longest first, so that "<=" is not read as "<".
OPERATORS = sorted({op for m in MUTATIONS.values() for op in m} | {"<<=", ">>=", "&^=", "&=", "|=", "^=", "%="},
                   key=len, reverse=True)


def mutate(src: bytes, line: int, col: int, kind: str) -> tuple[bytes, str]:
    """Returns src with the operator at line:col (1-based, bytes) mutated as kind, and a
    description such as "< -> <="."""
    lines = src.split(b"\n")
    if not 1 <= line <= len(lines):
        raise ValueError(f"line {line} is not in the file")
    off = sum(len(l) + 1 for l in lines[: line - 1]) + col - 1
    text = src[off : off + 3].decode("latin-1")
    op = next((o for o in OPERATORS if text.startswith(o)), None)
    to = MUTATIONS.get(kind, {}).get(op or "")
    if to is None:
        raise ValueError(f"no {kind} mutation of {text!r} at {line}:{col}")
    return src[:off] + to.encode() + src[off + len(op) :], f"{op} -> {to}"


def gotest(pkg: str, overlay: str | None, timeout: float | None) -> tuple[str, float, str]:
    cmd = ["go", "test", "-count=1", "-failfast"]
    if timeout:
        cmd.append(f"-timeout={int(timeout) + 2}s")  # the test binary ends too
    if overlay:
        cmd.append("-overlay=" + overlay)
    cmd.append(pkg)
    start = time.monotonic()
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
                           start_new_session=True)
    except subprocess.TimeoutExpired as e:
        return "TIMED OUT", time.monotonic() - start, (e.output or b"").decode(errors="replace")
    out = p.stdout.decode(errors="replace")
    secs = time.monotonic() - start
    if p.returncode == 0:
        return "LIVED", secs, out
    if "[build failed]" in out or "[setup failed]" in out:
        return "NOT VIABLE", secs, out
    return "KILLED", secs, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--status", action="append")
    ap.add_argument("--only", action="append", default=[])
    ap.add_argument("--timeout", type=float)
    ap.add_argument("--out")
    ap.add_argument("--verbose", action="store_true", help="print the tests' output of each killed mutant")
    ap.add_argument("pkg")
    ap.add_argument("report", nargs="?")
    a = ap.parse_args()
    pkgdir = os.path.abspath(a.pkg)
    pkg = "./" + os.path.relpath(pkgdir)
    report = json.load(open(a.report)) if a.report else {"files": []}
    todo = []  # (file, mutation dict)
    if a.only:
        for spec in a.only:
            f, line, col, kind = spec.rsplit(":", 3)
            todo.append((f, {"type": kind, "status": "", "line": int(line), "column": int(col)}))
    else:
        want = set(a.status or ["NOT COVERED"])
        for f in report.get("files", []):
            for m in f["mutations"]:
                if m["status"] in want:
                    todo.append((f["file_name"], m))
    if not todo:
        print("no mutant to judge")
        return 0

    timeout = a.timeout
    if timeout is None:
        status, secs, out = gotest(pkg, None, None)
        if status != "LIVED":
            print(f"the unmutated tests of {pkg} fail:\n{out}", file=sys.stderr)
            return 2
        timeout = max(secs, 1.0) * float(os.environ.get("MUTATE_TIMEOUT_COEFFICIENT", "10"))
        print(f"unmutated run {secs:.1f} s; timeout {timeout:.0f} s a mutant")

    counts = {}
    with tempfile.TemporaryDirectory(prefix="mutate-judge-") as tmp:
        for f, m in todo:
            path = os.path.join(pkgdir, f)
            src = open(path, "rb").read()
            where = f"{f}:{m['line']}:{m['column']}"
            try:
                mutated, what = mutate(src, m["line"], m["column"], m["type"])
            except ValueError as e:
                print(f"  SKIPPED {m['type']} at {where}: {e}")
                counts["SKIPPED"] = counts.get("SKIPPED", 0) + 1
                continue
            mpath = os.path.join(tmp, "mutant-" + os.path.basename(f))
            with open(mpath, "wb") as w:
                w.write(mutated)
            ov = os.path.join(tmp, "overlay.json")
            with open(ov, "w") as w:
                json.dump({"Replace": {path: mpath}}, w)
            status, secs, out = gotest(pkg, ov, timeout)
            m["status"] = status
            counts[status] = counts.get(status, 0) + 1
            print(f"  {status} {m['type']} at {where} ({what}, {secs:.0f} s)", flush=True)
            if a.verbose and status == "KILLED":
                lines = [l for l in out.splitlines() if "--- FAIL" in l or "_test.go:" in l or "panic:" in l]
                print("    " + "\n    ".join(lines[:8]))
    print(" ".join(f"{k.lower().replace(' ', '_')}={v}" for k, v in sorted(counts.items())))

    if a.out:
        allm = [m for f in report.get("files", []) for m in f["mutations"]]
        n = lambda s: sum(m["status"] == s for m in allm)
        report["mutants_killed"], report["mutants_lived"] = n("KILLED"), n("LIVED")
        report["mutants_not_covered"], report["mutants_not_viable"] = n("NOT COVERED"), n("NOT VIABLE")
        judged = report["mutants_killed"] + report["mutants_lived"]
        report["test_efficacy"] = 100 * report["mutants_killed"] / judged if judged else 0
        with open(a.out, "w") as w:
            json.dump(report, w, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
