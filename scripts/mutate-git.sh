#!/bin/sh
# mutate-git.sh is `git` on gremlins' PATH under MUTATE_DIFF (scripts/mutate.sh). gremlins
# --diff runs `git diff --merge-base REF` and compares the paths in it, relative to the
# repository, with its mutants' paths, relative to the package it mutates, so nothing
# ever matches. This makes that one command relative to the package ($MUTATE_REL, e.g.
# policy/), which also leaves out every file outside it; anything else goes to git as is.
if [ "$1" = diff ] && [ "$2" = --merge-base ] && [ $# -eq 3 ]; then
	exec "$MUTATE_REAL_GIT" diff --merge-base "$3" --relative="$MUTATE_REL"
fi
exec "$MUTATE_REAL_GIT" "$@"
