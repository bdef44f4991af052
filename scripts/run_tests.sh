#!/usr/bin/env bash
# Run every test program (build/tests/test_*) and test script (tests/test_*.sh), print their PASS, FAIL
# and SKIP lines, and finish with "N passed, N failed, N skipped". Usage:
#   scripts/run_tests.sh [build-dir] [name-filter]
#
# A check prints "PASS <name> ...", "FAIL <name>: ..." or, when it cannot run, "SKIP <name> (<reason>)".
# A program counts one failure if it exits non-zero without a FAIL line, or exits 0 without printing a
# single PASS, FAIL or SKIP line (a test that silently did nothing).
# Skips are listed with their reasons. With MG_TEST_STRICT=1 (set by `make test`, which installs every
# package first) a skip is a failure, except a GPU test's on a machine without a GPU: a SKIP whose
# reason starts with "no GPU". Exit status 0 iff nothing failed and at least one test program ran.
# MG_TEST_EXCLUDE="test_a test_b" leaves those programs out, and says so (make sanitize-ci).
set -u
BUILD=${1:-build}
FILTER=${2:-}
EXCLUDE=${MG_TEST_EXCLUDE:-}
excluded() { local n; for n in $EXCLUDE; do [ "$n" = "$1" ] && return 0; done; return 1; }
STRICT=${MG_TEST_STRICT:-0}
export MG_BUILD=$BUILD
LOGDIR=$BUILD/test-logs
mkdir -p "$LOGDIR"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1

GPU_SKIP='^SKIP .* \(no GPU'   # the one kind of skip strict mode allows
pass=0; fail=0; skip=0; ran=0; failed_names=(); skip_lines=()
start_all=$(date +%s.%N)

run_one() {
    local name=$1; shift
    local log=$LOGDIR/$name.log
    local t0; t0=$(date +%s.%N)
    "$@" >"$log" 2>&1
    local rc=$?
    local t1; t1=$(date +%s.%N)
    local p f s line
    p=$(grep -c '^PASS ' "$log")
    f=$(grep -c '^FAIL ' "$log")
    s=0
    grep -E '^(PASS|FAIL) ' "$log" | sed "s/^/  [$name] /"
    while IFS= read -r line; do
        if [ "$STRICT" = 1 ] && ! grep -qE "$GPU_SKIP" <<<"$line"; then
            echo "  [$name] FAIL ${line#SKIP } -- a skip is a failure under MG_TEST_STRICT=1 (make test installs everything the suite needs; make test-only allows skips)"
            f=$((f + 1))
        else
            echo "  [$name] $line"
            skip_lines+=("[$name] $line")
            s=$((s + 1))
        fi
    done < <(grep '^SKIP ' "$log")
    if [ "$rc" != 0 ] && [ "$(grep -c '^FAIL ' "$log")" = 0 ]; then
        echo "  [$name] FAIL $name exited with status $rc without reporting a failure; last lines:"
        tail -n 15 "$log" | sed 's/^/      /'
        f=$((f + 1))
    elif [ "$rc" = 0 ] && ! grep -qE '^(PASS|FAIL|SKIP) ' "$log"; then
        echo "  [$name] FAIL $name reported no PASS, FAIL or SKIP line; last lines:"
        tail -n 15 "$log" | sed 's/^/      /'
        f=$((f + 1))
    elif grep -q '^FAIL ' "$log"; then
        grep -B2 -A8 '^FAIL ' "$log" | grep -v -E '^(PASS) ' | head -n 40 | sed 's/^/      /'
    fi
    pass=$((pass + p)); fail=$((fail + f)); skip=$((skip + s)); ran=$((ran + 1))
    [ "$f" != 0 ] && failed_names+=("$name")
    printf '  %-28s %3d passed, %d failed, %d skipped  (%.1f s)\n' "$name" "$p" "$f" "$s" "$(awk "BEGIN{print $t1 - $t0}")"
}

for bin in "$BUILD"/tests/test_*; do
    [ -x "$bin" ] || continue
    name=$(basename "$bin")
    [ -n "$FILTER" ] && [[ "$name" != *"$FILTER"* ]] && continue
    excluded "$name" && continue
    echo "== $name"
    run_one "$name" "$bin"
done
for script in tests/test_*.sh; do
    [ -f "$script" ] || continue
    name=$(basename "$script" .sh)
    [ -n "$FILTER" ] && [[ "$name" != *"$FILTER"* ]] && continue
    excluded "$name" && continue
    echo "== $name"
    run_one "$name" bash "$script"
done

elapsed=$(awk "BEGIN{print $(date +%s.%N) - $start_all}")
echo
if [ "$ran" = 0 ]; then
    echo "no test program matched${FILTER:+ '$FILTER'} (built? run make)"
    fail=$((fail + 1))
fi
if [ ${#skip_lines[@]} -gt 0 ]; then
    echo "skipped (these checks did not run):"
    printf '  %s\n' "${skip_lines[@]}"
fi
[ -n "$EXCLUDE" ] && echo "left out (MG_TEST_EXCLUDE): $EXCLUDE"
[ ${#failed_names[@]} -gt 0 ] && echo "failing: ${failed_names[*]} (logs in $LOGDIR/)"
printf 'test time %.1f s%s\n' "$elapsed" "$([ "$STRICT" = 1 ] && echo ' (strict: MG_TEST_STRICT=1, skips other than "no GPU" fail)')"
echo "$pass passed, $fail failed, $skip skipped"
[ "$fail" = 0 ]
