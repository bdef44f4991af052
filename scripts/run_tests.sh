#!/usr/bin/env bash
# Run every test program (build/tests/test_*) and test script (tests/test_*.sh), print their PASS/FAIL
# lines, and finish with "N passed, N failed". A program that crashes or exits non-zero without printing
# a FAIL line counts as one failure. Usage: scripts/run_tests.sh [build-dir] [name-filter]
set -u
BUILD=${1:-build}
FILTER=${2:-}
export MG_BUILD=$BUILD
LOGDIR=$BUILD/test-logs
mkdir -p "$LOGDIR"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1

pass=0; fail=0; failed_names=()
start_all=$(date +%s.%N)

run_one() {
    local name=$1; shift
    local log=$LOGDIR/$name.log
    local t0; t0=$(date +%s.%N)
    "$@" >"$log" 2>&1
    local rc=$?
    local t1; t1=$(date +%s.%N)
    local p f
    p=$(grep -c '^PASS ' "$log")
    f=$(grep -c '^FAIL ' "$log")
    grep -E '^(PASS|FAIL) ' "$log" | sed "s/^/  [$name] /"
    if [ "$rc" != 0 ] && [ "$f" = 0 ]; then
        echo "  [$name] FAIL $name exited with status $rc without reporting a failure; last lines:"
        tail -n 15 "$log" | sed 's/^/      /'
        f=1
    elif [ "$f" != 0 ]; then
        grep -B2 -A8 '^FAIL ' "$log" | grep -v -E '^(PASS) ' | head -n 40 | sed 's/^/      /'
    fi
    pass=$((pass + p)); fail=$((fail + f))
    [ "$f" != 0 ] && failed_names+=("$name")
    printf '  %-28s %3d passed, %d failed  (%.1f s)\n' "$name" "$p" "$f" "$(awk "BEGIN{print $t1 - $t0}")"
}

for bin in "$BUILD"/tests/test_*; do
    [ -x "$bin" ] || continue
    name=$(basename "$bin")
    [ -n "$FILTER" ] && [[ "$name" != *"$FILTER"* ]] && continue
    echo "== $name"
    run_one "$name" "$bin"
done
for script in tests/test_*.sh; do
    [ -f "$script" ] || continue
    name=$(basename "$script" .sh)
    [ -n "$FILTER" ] && [[ "$name" != *"$FILTER"* ]] && continue
    echo "== $name"
    run_one "$name" bash "$script"
done

elapsed=$(awk "BEGIN{print $(date +%s.%N) - $start_all}")
echo
[ ${#failed_names[@]} -gt 0 ] && echo "failing: ${failed_names[*]} (logs in $LOGDIR/)"
printf 'test time %.1f s\n' "$elapsed"
echo "$pass passed, $fail failed"
[ "$fail" = 0 ] && [ "$pass" -gt 0 ]
