#!/usr/bin/env bash
# scripts/run_tests.sh itself: in a throw-away tree with fake test programs (build/tests/test_*) and fake
# test scripts (tests/test_*.sh) that print known PASS / FAIL / SKIP lines, the runner's per-program
# and total counts, its skip list and its exit status, with and without MG_TEST_STRICT=1.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNNER=$ROOT/scripts/run_tests.sh
T=$(mktemp -d /tmp/mg_test_runner.XXXXXX)
trap 'rm -rf "$T"' EXIT
pass() { echo "PASS $1${2:+ ($2)}"; }
fail() { echo "FAIL $1: $2"; }
# check NAME CONDITION-EXIT-STATUS DETAIL
check() { if [ "$2" = 0 ]; then pass "$1" "$3"; else fail "$1" "$3"; fi; }

# fake TREE NAME BODY: an executable build/tests/NAME (a shell script standing in for a C test program)
fake() {
    mkdir -p "$1/build/tests" "$1/tests"
    printf '#!/usr/bin/env bash\n%s\n' "$3" >"$1/build/tests/$2"
    chmod +x "$1/build/tests/$2"
}
# fake_sh TREE NAME BODY: a test script tests/NAME.sh (run by the runner with bash)
fake_sh() {
    mkdir -p "$1/build/tests" "$1/tests"
    printf '%s\n' "$3" >"$1/tests/$2.sh"
}
# run TREE STRICT [FILTER]: run the runner in TREE; output in $out, exit status in $rc
run() {
    out=$(cd "$1" && MG_TEST_STRICT=$2 bash "$RUNNER" build ${3:+"$3"} 2>&1)
    rc=$?
}
last() { tail -n 1 <<<"$out"; }
# summary line of one program: "NAME  N passed, N failed, N skipped"
prog() { grep -E "^  $1 +[0-9]+ passed" <<<"$out" | sed -E 's/ +\(.*//; s/  +/ /g; s/^ //'; }

# ---- a suite that passes, with skips: 4 passes, 2 ordinary skips, 1 GPU skip ------------------------------
A=$T/a
fake "$A" test_plain 'echo "PASS one (ok)"; echo "PASS two"; echo "# a comment"; exit 0'
fake "$A" test_tool 'echo "PASS three"; echo "SKIP tool_parity (/usr/bin/python3 cannot import torch)"; exit 0'
fake "$A" test_cuda 'echo "SKIP cuda_gemm (no GPU: no CUDA device)"; exit 0'
fake_sh "$A" test_script 'echo "PASS four"; echo "SKIP script_part (h5dump not found)"'

run "$A" 0
check runner_counts_skips "$([ "$(last)" = "4 passed, 0 failed, 3 skipped" ] && [ $rc = 0 ]; echo $?)" "last line '$(last)', exit $rc"
check runner_per_program_counts "$([ "$(prog test_tool)" = "test_tool 1 passed, 0 failed, 1 skipped" ] &&
    [ "$(prog test_plain)" = "test_plain 2 passed, 0 failed, 0 skipped" ] &&
    [ "$(prog test_script)" = "test_script 1 passed, 0 failed, 1 skipped" ]; echo $?)" "$(prog test_tool); $(prog test_script)"
check runner_lists_skips_with_reasons "$(grep -q '^  \[test_tool\] SKIP tool_parity (/usr/bin/python3 cannot import torch)$' <<<"$out" &&
    grep -A3 '^skipped' <<<"$out" | grep -q 'script_part (h5dump not found)'; echo $?)" "skip lines and the final list"

run "$A" 1
check runner_strict_fails_skips "$([ "$(last)" = "4 passed, 2 failed, 1 skipped" ] && [ $rc != 0 ]; echo $?)" "last line '$(last)', exit $rc"
check runner_strict_allows_no_gpu "$([ "$(prog test_cuda)" = "test_cuda 0 passed, 0 failed, 1 skipped" ] &&
    [ "$(prog test_tool)" = "test_tool 1 passed, 1 failed, 0 skipped" ] &&
    grep -q 'FAIL tool_parity (/usr/bin/python3 cannot import torch) -- a skip is a failure' <<<"$out" &&
    grep '^failing: ' <<<"$out" | grep -q test_tool && ! grep '^failing: ' <<<"$out" | grep -q test_cuda; echo $?)" \
    "$(prog test_cuda); $(prog test_tool)"

run "$A" 1 cuda
check runner_strict_gpu_skip_only_passes "$([ "$(last)" = "0 passed, 0 failed, 1 skipped" ] && [ $rc = 0 ]; echo $?)" "filter cuda: '$(last)', exit $rc"

out=$(cd "$A" && MG_TEST_EXCLUDE="test_tool test_script" MG_TEST_STRICT=0 bash "$RUNNER" build 2>&1)
rc=$?
check runner_exclude_leaves_out_and_says_so "$([ "$(last)" = "2 passed, 0 failed, 1 skipped" ] && [ $rc = 0 ] &&
    ! grep -qE '^== test_(tool|script)$' <<<"$out" && grep -q '^left out (MG_TEST_EXCLUDE): test_tool test_script$' <<<"$out"; echo $?)" \
    "MG_TEST_EXCLUDE='test_tool test_script': '$(last)', exit $rc"

# ---- failures: a FAIL line, a crash without one, a program that reports nothing ------------------------
B=$T/b
fake "$B" test_ok 'echo "PASS fine"'
fake "$B" test_fails 'echo "PASS a"; echo "FAIL b: 2 > 1"; echo "FAIL c: nan"; exit 1'
fake "$B" test_crash 'echo "PASS before the crash"; exit 3'
fake "$B" test_silent 'echo "# nothing to report"; exit 0'
run "$B" 0
check runner_counts_failures "$([ "$(last)" = "3 passed, 4 failed, 0 skipped" ] && [ $rc != 0 ]; echo $?)" "last line '$(last)', exit $rc"
check runner_crash_without_fail_is_a_failure "$([ "$(prog test_crash)" = "test_crash 1 passed, 1 failed, 0 skipped" ] &&
    grep -q 'FAIL test_crash exited with status 3' <<<"$out"; echo $?)" "$(prog test_crash)"
check runner_silent_program_is_a_failure "$([ "$(prog test_silent)" = "test_silent 0 passed, 1 failed, 0 skipped" ] &&
    grep -q 'FAIL test_silent reported no PASS, FAIL or SKIP line' <<<"$out"; echo $?)" "$(prog test_silent)"
check runner_names_failing_programs "$(grep -q '^failing: test_crash test_fails test_silent ' <<<"$out"; echo $?)" \
    "$(grep '^failing' <<<"$out")"

# ---- a filter that matches nothing is not a pass -----------------------------------------------------
run "$B" 0 no_such_test
check runner_empty_selection_fails "$([ $rc != 0 ] && grep -q "no test program matched 'no_such_test'" <<<"$out"; echo $?)" "exit $rc"

# ---- the C harness: tu_skip's lines are what the runner counts ------------------------------------------
C=$T/c
mkdir -p "$C/build/tests" "$C/tests"
cat >"$T/skipper.c" <<'EOF'
#include "tests/test_util.h"
int main(void) {
    tu_init("test_skipper");
    tu_check(1, "c_pass", "%d", 1);
    tu_skip("c_tool_part", "needs %s", "h5dump");
    tu_skip("c_gpu_part", TU_NO_GPU ": no CUDA device");
    return tu_finish();
}
EOF
if ${CC:-cc} -std=c11 -D_GNU_SOURCE -I"$ROOT" -o "$C/build/tests/test_skipper" "$T/skipper.c" "$ROOT/tests/test_util.c" "$ROOT/src/common.c" -lm \
    >"$T/cc.log" 2>&1; then
    run "$C" 0
    check runner_counts_tu_skip "$([ "$(last)" = "1 passed, 0 failed, 2 skipped" ] && [ $rc = 0 ] &&
        grep -q '^  \[test_skipper\] SKIP c_tool_part (needs h5dump)$' <<<"$out"; echo $?)" "'$(last)', exit $rc"
    run "$C" 1
    check runner_strict_tu_skip "$([ "$(last)" = "1 passed, 1 failed, 1 skipped" ] && [ $rc != 0 ]; echo $?)" \
        "strict: '$(last)', exit $rc (the TU_NO_GPU skip is allowed)"
else
    fail runner_counts_tu_skip "cannot compile a test program with tests/test_util.c: $(head -c 600 "$T/cc.log")"
fi
