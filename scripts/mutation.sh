#!/usr/bin/env bash
# Mutation testing of the code that decides what becomes of a message: every
# small change mutmut makes to it (a < for a <=, a dropped condition, another
# constant) should make a test fail. Outside CI: it runs tests for every
# mutant, which takes hours on two cores.
#
#   pip install -e '.[mutation]'
#   scripts/mutation.sh                           # core/ and the SQLite transitions
#   MUTATION_STORE=postgres scripts/mutation.sh   # the PostgreSQL transitions
#   scripts/mutation.sh 'conveyor.core.retry*'    # only these mutants (mutmut's names)
#
# What is mutated, and the fast tests that decide it:
#   sqlite (default)  src/conveyor/core/* (core/transitions.py decides every
#                     transition), what both stores share (store/mapping.py,
#                     store/effects.py), store/sqlite/messages.py (enqueue,
#                     claim, ack, nack, extend, dead, release, sweep);
#                     tests/unit and tests/conformance on the SQLite stores
#                     (file and memory), but test_volume.py (slow, and it
#                     decides nothing the others miss)
#   postgres          store/postgres/messages.py and enqueue.py; the
#                     conformance tests on PostgreSQL (CONVEYOR_TEST_POSTGRES,
#                     as for the suite), but test_volume.py
# For each mutant mutmut runs only the tests that reach the mutated
# function, fastest first, until one fails.
#
# It works in a scratch copy of src/, tests/ and pyproject.toml, one per
# profile (MUTATION_DIR, default $TMPDIR/conveyor-mutation-PROFILE), so the
# work tree stays clean; mutmut keeps its results there, and a second run
# tests only the functions that changed. Everything runs under nice 19.
#
# Settings (environment):
#   MUTATION_STORE            sqlite or postgres (above)
#   MUTATION_DIR              the scratch copy and mutmut's results
#   MUTATION_CHILDREN         mutants tested at once (default 2)
#   CONVEYOR_STATEFUL_SCALE   examples of the state machine, as a fraction of
#                             the suite's (default 0.05)
#
# At the end it prints the score (killed, timeouts included, over the
# mutants tested so far) and every mutant left alive, as a diff; the whole log of the run
# is in $MUTATION_DIR/run.log.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
store="${MUTATION_STORE:-sqlite}"
work="${MUTATION_DIR:-${TMPDIR:-/tmp}/conveyor-mutation-$store}"
children="${MUTATION_CHILDREN:-2}"
export CONVEYOR_STATEFUL_SCALE="${CONVEYOR_STATEFUL_SCALE:-0.05}"

case "$store" in
    sqlite)
        mutate='"src/conveyor/core/*", "src/conveyor/store/mapping.py", "src/conveyor/store/effects.py", "src/conveyor/store/sqlite/messages.py"'
        tests='"tests/unit", "tests/conformance", "-k", "not postgres"'
        ;;
    postgres)
        mutate='"src/conveyor/store/postgres/messages.py", "src/conveyor/store/postgres/enqueue.py"'
        tests='"tests/conformance", "-k", "postgres"'
        ;;
    *)
        echo "MUTATION_STORE is sqlite or postgres, not $store" >&2
        exit 2
        ;;
esac

if ! python -c "import mutmut" 2>/dev/null; then
    echo "mutmut is not installed: pip install -e '.[mutation]'" >&2
    exit 2
fi

mkdir -p "$work"
rm -rf "$work/src" "$work/tests" "$work/pyproject.toml"
cp -r "$root/src" "$root/tests" "$root/pyproject.toml" "$work/"
find "$work/src" "$work/tests" -name __pycache__ -prune -exec rm -rf {} +
cat >>"$work/pyproject.toml" <<CONFIG

[tool.mutmut]
source_paths = ["src"]
only_mutate = [$mutate]
pytest_add_cli_args_test_selection = [$tests, "--ignore=tests/conformance/test_volume.py"]
pytest_add_cli_args = ["-p", "no:cacheprovider"]
CONFIG
cd "$work"

echo "mutation testing ($store) in $work (log: $work/run.log)"
if ! nice -n 19 python -m mutmut run --max-children "$children" "$@" >"$work/run.log" 2>&1; then
    tail -n 40 "$work/run.log" >&2
    exit 1
fi
python - "$@" <<'REPORT'
import subprocess
import sys
from collections import Counter
from fnmatch import fnmatch


def mutmut(*args: str) -> str:
    command = [sys.executable, "-m", "mutmut", *args]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


listed = [line.strip().rsplit(": ", 1) for line in mutmut("results", "--all", "true").splitlines()]
status = {name: state for name, state in (pair for pair in listed if len(pair) == 2)}
counts = Counter(status.values())
killed = counts["killed"] + counts["timeout"] + counts["caught by type check"]
checked = sum(counts.values()) - counts["not checked"]
print(f"score: {killed}/{checked} tested mutants killed ({100 * killed / max(checked, 1):.1f}%)")
print("  " + ", ".join(f"{state} {n}" for state, n in sorted(counts.items())))
alive = [n for n, s in status.items() if s not in ("killed", "timeout", "not checked")]
alive = [n for n in alive if not sys.argv[1:] or any(fnmatch(n, p) for p in sys.argv[1:])]
for name in alive:
    print(f"\n== {status[name]}: {name}")
    print(mutmut("show", name).rstrip())
REPORT
