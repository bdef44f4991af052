#!/usr/bin/env bash
# The parallel/ layer under real MPI: build/tests/mpi_scan_check (tests/parallel/mpi_scan_check.c) under
# mpirun with 2, 3 and 4 ranks (oversubscribed on small machines): the transport, the grid, every scan
# algorithm x operator x element type x direction against the serial fold, and the agreement check;
# then the failure paths, each bounded by `timeout` so a hang fails instead of blocking the suite: an SP
# that does not divide P is refused on every rank with the same message, a config that differs on one
# rank is named on every rank, and abort_all ends the whole job. Without MPI in the build: SKIP.
set -u
BUILD=${MG_BUILD:-build}
BIN=$BUILD/tests/mpi_scan_check
# Open MPI refuses to run as root, and more ranks than cores, unless told (scripts/run_tests.sh sets these too).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
# Under LeakSanitizer (make sanitize): Open MPI keeps allocations from MPI_Init to exit; tests/lsan.supp
# names its libraries. For the suppressions to see them, its plugins stay loaded (named frames), and
# stacks are unwound fully (its libraries have no frame pointers, so the fast unwinder stops at their
# first frame).
export OMPI_MCA_mca_base_component_disable_dlclose=1 PMIX_MCA_mca_base_component_disable_dlclose=1
[ -n "${ASAN_OPTIONS:-}" ] && export ASAN_OPTIONS="$ASAN_OPTIONS:fast_unwind_on_malloc=0"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fails=0
pass() { echo "PASS $1${2:+ ($2)}"; }
fail() { echo "FAIL $1: $2"; fails=$((fails + 1)); }

if ! "$BUILD/megalodon" features 2>/dev/null | grep -q '^MPI: *yes'; then
    echo "SKIP parallel_mpi (this build has no MPI: no mpicc when it was built; install libopenmpi-dev and openmpi-bin (make deps) and rebuild)"
    exit 0
fi
if ! command -v mpirun >/dev/null; then
    echo "SKIP parallel_mpi (the build has MPI but mpirun is not on PATH; install openmpi-bin)"
    exit 0
fi
if [ ! -x "$BIN" ]; then
    echo "FAIL parallel_worker: $BIN not built (run make)"
    exit 1
fi

# All checks with n ranks; the worker's PASS/FAIL lines are relayed with an np<n>_ prefix.
run_all() { # n [args...]
    local n=$1; shift
    local rc=0
    timeout 60 mpirun -np "$n" "$BIN" "$@" >"$TMP/out" 2>"$TMP/err" || rc=$?
    sed -n -E "s/^(PASS|FAIL) /\1 np${n}_/p" "$TMP/out"
    grep -q '^FAIL ' "$TMP/out" && fails=$((fails + 1))
    if [ "$rc" != 0 ] && ! grep -q '^FAIL ' "$TMP/out"; then
        fail "np${n}_worker" "exit status $rc$([ "$rc" = 124 ] && echo ' (timed out: a hang)'); stderr: $(tail -n 5 "$TMP/err" | tr '\n' ' ')"
    elif [ "$(grep -c '^PASS ' "$TMP/out")" -lt 9 ]; then
        fail "np${n}_worker" "expected at least 9 PASS lines, got $(grep -c '^PASS ' "$TMP/out")"
    fi
}
run_all 2
run_all 4
run_all 3 --sp 3

# A job that must fail on every rank with one message: rc != 0 and not a timeout, the message once per rank.
expect_refusal() { # name n pattern [args...]
    local name=$1 n=$2 pat=$3; shift 3
    local rc=0
    timeout 30 mpirun -np "$n" "$BIN" "$@" >"$TMP/out" 2>"$TMP/err" || rc=$?
    local hits
    hits=$(grep -c -- "$pat" "$TMP/err")
    local ranks
    ranks=$(grep -- "$pat" "$TMP/err" | sed -n -E 's/^rank ([0-9]+): error: .*/\1/p' | sort -u | tr '\n' ' ')
    local msgs
    msgs=$(grep -- "$pat" "$TMP/err" | sed -E 's/^rank [0-9]+: //' | sort -u | wc -l)
    if [ "$rc" = 0 ] || [ "$rc" = 124 ]; then
        fail "$name" "exit status $rc (want non-zero, not a timeout)"
    elif [ "$hits" != "$n" ] || [ "$msgs" != 1 ]; then
        fail "$name" "want the same message on each of $n ranks, got $hits lines, $msgs distinct (ranks: $ranks): $(head -c 600 "$TMP/err")"
    else
        pass "$name" "exit $rc; ranks ${ranks% }: $(sed -n '1s/^rank [0-9]*: //p' <(grep -- "$pat" "$TMP/err"))"
    fi
}
expect_refusal grid_sp3_of_4_refused 4 "sequence parallel size 3 does not divide the 4 ranks" --grid-only --sp 3
expect_refusal agreement_config_differs_on_rank_2 4 "1 of 4 ranks disagree with rank 0.*rank 2 (config hash" --config-mismatch 2

# a valid grid: 4 ranks as DP 2 x SP 2 (each launch costs seconds under the sanitizers: few of them)
for sp in 2; do
    rc=0
    timeout 30 mpirun -np 4 "$BIN" --grid-only --sp $sp >"$TMP/out" 2>"$TMP/err" || rc=$?
    want=$(for r in 0 1 2 3; do echo "rank $r: grid $((4 / sp)) x $sp: dp $((r / sp)) sp $((r % sp))"; done)
    if [ "$rc" = 0 ] && [ "$(sort "$TMP/out")" = "$want" ]; then
        pass "grid_4_ranks_sp$sp" "rank -> (dp, sp) with the SP ranks of a DP group contiguous"
    else
        fail "grid_4_ranks_sp$sp" "exit $rc; got: $(tr '\n' ';' <"$TMP/out") want: $(tr '\n' ';' <<<"$want")"
    fi
done

# abort_all from one rank ends the whole job (the others wait in a barrier)
rc=0
timeout 30 mpirun -np 4 "$BIN" --abort 1 >"$TMP/out" 2>"$TMP/err" || rc=$?
if [ "$rc" != 0 ] && [ "$rc" != 124 ] && grep -q "error: rank 1: test abort requested on rank 1" "$TMP/err"; then
    pass abort_all_ends_every_rank "exit $rc, message from rank 1"
else
    fail abort_all_ends_every_rank "exit $rc (want non-zero, not 124); stderr: $(head -c 600 "$TMP/err")"
fi

[ "$fails" = 0 ]
