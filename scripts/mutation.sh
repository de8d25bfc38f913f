#!/usr/bin/env bash
# Mutation testing (mutmut) of the pure modules with their fast tests: each small change mutmut
# makes to the code must fail at least one test. Prints mutmut's results and the kill rate.
#
#   bash scripts/mutation.sh                      # about 30 minutes on 2 cores
#   bash scripts/mutation.sh latentsync/face/track.py tests/test_planner.py   # one module, its tests
#
# It works in a copy of the repository under $MUTATION_DIR (default /tmp/latentsync-mutation), so
# the checkout is left as it is; `cd $MUTATION_DIR && mutmut show <name>` shows a mutant.
# audio.py's pause logic is left out until its voice detection has settled (see the README).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${MUTATION_DIR:-/tmp/latentsync-mutation}"
modules=(latentsync/planner.py latentsync/face/align.py latentsync/face/track.py latentsync/options.py latentsync/client/params.py)
tests=(tests/test_planner.py tests/test_face_align.py tests/test_render.py tests/test_options.py)
if [ $# -gt 0 ]; then
    modules=() tests=()
    for path in "$@"; do case "$path" in tests/*) tests+=("$path") ;; *) modules+=("$path") ;; esac; done
fi

rm -rf "$work" && mkdir -p "$work"
cp -r "$repo/latentsync" "$repo/tests" "$repo/configs" "$repo/pytest.ini" "$work/"
{
    echo "[mutmut]"
    echo "source_paths = latentsync"
    echo "only_mutate ="; printf '    %s\n' "${modules[@]}"
    echo "also_copy ="; printf '    %s\n' configs pytest.ini
    echo "pytest_add_cli_args = -p no:cacheprovider -q"
    echo "pytest_add_cli_args_test_selection ="; printf '    %s\n' "${tests[@]}"
} > "$work/setup.cfg"

cd "$work"
export LATENTSYNC_SHARED_DIR="${LATENTSYNC_SHARED_DIR:-$(dirname "$repo")/shared}"
nice -n 15 "$repo/.venv/bin/mutmut" run --max-children "${MUTATION_JOBS:-2}" > mutmut.log 2>&1 || { tail -40 mutmut.log; exit 1; }
"$repo/.venv/bin/mutmut" results --all true > results.txt
grep -Eo ': [a-z ]+$' results.txt | sort | uniq -c
killed=$(grep -c ': killed$' results.txt || true)
total=$(grep -c ': ' results.txt || true)
echo "kill rate: $killed of $total mutants ($(( 100 * killed / total ))%); survivors: grep -v ': killed' $work/results.txt"
