#!/usr/bin/env bash
# Distributed training under real MPI (docs/parallelism.md), oversubscribed on small machines:
#   * build/tests/mpi_train_check: one step of DP x SP in {1x2, 1x4, 2x1, 2x2}, every scan algorithm,
#     a chunk over 2 ranks by gathering keys and values and over 4 by all-to-all over heads, and the
#     backward by reverse scans (2x2, every algorithm), float32 and float64: loss,
#     reduced gradients and the ZeRO-1 update against one process;
#   * `megalodon train` with P ranks tracks the one-process run of the same global batch for 12 steps
#     (training and validation losses, dropout on) for (DP, SP) = (2,1), (1,2), (2,2), (1,4), the
#     pipelined scan forward and backward at SP 2, and an attention chunk over 2 ranks (all-to-all) and over 4 (gather);
#   * a checkpoint written by 4 ranks (DP 2 x SP 2) resumes on 2 ranks and on 1 process and continues as
#     the uninterrupted run does;
#   * bad layouts are refused with their message on every launch, within a time bound, writing nothing;
#   * periodic checkpoints written in the background by rank 0 (ckpt_async) equal synchronous ones;
#   * a rank killed with SIGKILL ends the whole job non-zero within the bound; SIGTERM to mpirun gives one
#     coordinated checkpoint, and the run resumes from it; SIGUSR1 while a background write is in flight
#     publishes that checkpoint and the signal's.
# Under the sanitizers (ASAN_OPTIONS set: make sanitize) a reduced set runs (one layout for 4 steps with
# evaluation and the gathered checkpoint, one refusal, the SIGUSR1 stop and resume): the numerics and the
# launcher's behaviour are the normal pass's job, memory errors the sanitizer pass's. Without MPI: SKIP.
set -u
BUILD=${MG_BUILD:-build}
M=$BUILD/megalodon
CHECK=$BUILD/tests/mpi_train_check
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_mca_base_component_disable_dlclose=1 PMIX_MCA_mca_base_component_disable_dlclose=1
[ -n "${ASAN_OPTIONS:-}" ] && export ASAN_OPTIONS="$ASAN_OPTIONS:fast_unwind_on_malloc=0"
SAN=0
[ -n "${ASAN_OPTIONS:-}" ] && SAN=1
T=$(mktemp -d)
trap 'pkill -KILL -f "$T/" 2>/dev/null; rm -rf "$T"' EXIT
fails=0
pass() { echo "PASS $1${2:+ ($2)}"; }
fail() { echo "FAIL $1: $2"; fails=$((fails + 1)); }

if ! "$M" features 2>/dev/null | grep -q '^MPI: *yes'; then
    echo "SKIP dist_train (this build has no MPI: install libopenmpi-dev and openmpi-bin (make deps) and rebuild)"
    exit 0
fi
if ! command -v mpirun >/dev/null; then
    echo "SKIP dist_train (the build has MPI but mpirun is not on PATH; install openmpi-bin)"
    exit 0
fi
if ! "$M" features | grep -q '^HDF5: *yes'; then
    echo "SKIP dist_train (this build has no HDF5, so no checkpoints; install libhdf5-dev (make deps) and rebuild)"
    exit 0
fi
if [ ! -d data/corpus/train ] || [ ! -d data/corpus/val ]; then
    echo "# preparing the default corpus (scripts/prepare_data.sh)"
    scripts/prepare_data.sh >"$T/prepare.log" 2>&1 || { fail "prepare default corpus" "$(tail -n 5 "$T/prepare.log")"; exit 1; }
fi
MPIRUN=(timeout -k 5 240 mpirun --mca odls_base_sigkill_timeout 30)

# ---- one step against one process ----------------------------------------------------------------------
if [ $SAN = 0 ]; then
    # (the threads of test_sp cover every combination; here each path once under real MPI)
    for layout in "2 2" "4 4" "2 1" "4 2" "2 2 2 ring" "4 4 4 ring" "2 2 2 gather" "4 4 4 alltoall" "4 2 bwd"; do
        set -- $layout
        span=()
        [ $# = 4 ] && span=(--span "$3" --attention "$4") # attention chunks over $3 ranks
        [ $# = 3 ] && span=(--scan-backward)                # state gradients by reverse scans
        out=$("${MPIRUN[@]}" -np "$1" "$CHECK" --sp "$2" "${span[@]}" 2>&1)
        rc=$?
        echo "$out" | grep -E '^(PASS|FAIL) ' | sed "s/^\(PASS\|FAIL\) /\1 np$1_/"
        n_fail=$(echo "$out" | grep -c '^FAIL ')
        fails=$((fails + n_fail))
        if [ $rc != 0 ] && [ "$n_fail" = 0 ]; then fail "np$1_sp$2_train_check" "exit $rc: $(echo "$out" | tail -3)"; fi
    done
fi

# ---- training runs track one process ----------------------------------------------------------------------
STEPS=20
[ $SAN = 1 ] && STEPS=4
RUN=(--config configs/tiny.conf --seq_len 128 --batch_size 2 --batch_tokens 1024 --threads 1 --max_steps $STEPS
    --warmup_steps 3 --eval_every 10 --eval_batches 4 --log_every 5 --dropout 0.1 --hidden_dropout 0.1
    --attention_dropout 0.1)
[ $SAN = 1 ] && RUN+=(--eval_every 2 --eval_batches 2)

# compare A B TOL: the largest relative difference of loss and val_loss over the steps of two log.jsonl
compare() {
    python3 - "$1/log.jsonl" "$2/log.jsonl" "$3" <<'EOF'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
tol = float(sys.argv[3])
if [r["step"] for r in a] != [r["step"] for r in b]:
    print("steps differ: %s vs %s" % ([r["step"] for r in a], [r["step"] for r in b])); sys.exit(1)
w = 0.0
for x, y in zip(a, b):
    for k in ("loss", "val_loss"):
        if k in y:
            w = max(w, abs(x[k] - y[k]) / abs(y[k]))
print("%d steps, largest relative loss difference %.2e (tolerance %.0e)" % (len(a), w, tol))
sys.exit(0 if w <= tol else 1)
EOF
}

"$M" train "${RUN[@]}" --out_dir "$T/ref" >"$T/ref.txt" 2>&1 || fail one_process_run "$(tail -3 "$T/ref.txt")"
# (SP alone, 2:2 and 4:4, trains below with a chunk over the ranks; whole-chunk SP layouts are
# mpi_train_check's above)
LAYOUTS="4:2"
[ $SAN = 0 ] && LAYOUTS="2:1 4:2"
for layout in $LAYOUTS; do
    P=${layout%:*} S=${layout#*:}
    name="train_np${P}_sp${S}_tracks_one_process"
    if "${MPIRUN[@]}" -np "$P" "$M" train "${RUN[@]}" --sp "$S" --out_dir "$T/p${P}s${S}" >"$T/p${P}s${S}.txt" 2>&1; then
        if msg=$(compare "$T/p${P}s${S}" "$T/ref" 1e-5); then pass "$name" "$msg"; else fail "$name" "$msg"; fi
    else
        fail "$name" "exit status $?: $(tail -3 "$T/p${P}s${S}.txt")"
    fi
done
if [ $SAN = 0 ]; then
    # chain is the default (the layouts above); the other scans' step parity is mpi_train_check's
    for algo in pipelined; do
        name="train_np2_sp2_${algo}_scan_forward_and_backward_tracks_one_process"
        if "${MPIRUN[@]}" -np 2 "$M" train "${RUN[@]}" --sp 2 --sp_scan $algo --sp_backward scan --out_dir "$T/$algo" \
            >"$T/$algo.txt" 2>&1; then
            if msg=$(compare "$T/$algo" "$T/ref" 1e-5); then pass "$name" "$msg"; else fail "$name" "$msg"; fi
        else
            fail "$name" "exit status $?: $(tail -3 "$T/$algo.txt")"
        fi
    done
fi
# attention chunks longer than a rank's slice: one chunk of 128 tokens over 2 ranks (sp_attention auto:
# all-to-all over the 2 heads) and over 4 ranks (auto: the ring, as 4 ranks do not divide 2 heads)
if [ $SAN = 0 ]; then
    "$M" train "${RUN[@]}" --chunk_size 128 --out_dir "$T/ref_c128" >"$T/ref_c128.txt" 2>&1 ||
        fail one_process_run_chunk128 "$(tail -3 "$T/ref_c128.txt")"
    for P in 2 4; do
        name="train_np${P}_sp${P}_chunk_over_${P}_ranks_tracks_one_process"
        if "${MPIRUN[@]}" -np "$P" "$M" train "${RUN[@]}" --chunk_size 128 --sp "$P" --out_dir "$T/c128_$P" \
            >"$T/c128_$P.txt" 2>&1; then
            if msg=$(compare "$T/c128_$P" "$T/ref_c128" 1e-5); then pass "$name" "$msg"; else fail "$name" "$msg"; fi
        else
            fail "$name" "exit status $?: $(tail -3 "$T/c128_$P.txt")"
        fi
    done
fi
if grep -q "^ranks: 4 = 2 data-parallel groups x sp 2" "$T/p4s2.txt" && [ "$(grep -c "^step " "$T/p4s2.txt")" -ge 2 ]; then
    pass train_np4_prints_once "rank 0 prints the header and the step lines, the others nothing"
else
    fail train_np4_prints_once "$(head -5 "$T/p4s2.txt")"
fi

# ---- resharding: a checkpoint of 4 ranks resumes on 2 ranks and on 1 process ------------------------------
if [ $SAN = 0 ]; then
    HALF=$((STEPS / 2))
    if "${MPIRUN[@]}" -np 4 "$M" train "${RUN[@]}" --sp 2 --stop_at $HALF --out_dir "$T/cut" >"$T/cut.txt" 2>&1 &&
        "$M" ckpt info "$T/cut/ckpt_$(printf %08d $HALF).h5" >"$T/info.txt" 2>&1 && grep -Eq "^status: +ok" "$T/info.txt"; then
        pass ckpt_np4_is_one_file "ckpt_$(printf %08d $HALF).h5 verifies like a one-process checkpoint"
        for target in "2:1" "1:1"; do
            P=${target%:*} S=${target#*:}
            d="$T/resume_p${P}s${S}"
            cp -r "$T/cut" "$d"
            if [ "$P" = 1 ]; then
                "$M" train "${RUN[@]}" --resume auto --out_dir "$d" >"$d.txt" 2>&1
            else
                "${MPIRUN[@]}" -np "$P" "$M" train "${RUN[@]}" --sp "$S" --resume auto --out_dir "$d" >"$d.txt" 2>&1
            fi
            rc=$?
            name="ckpt_np4_sp2_resumes_on_np${P}_sp${S}"
            if [ $rc = 0 ] && msg=$(compare "$d" "$T/ref" 1e-5); then pass "$name" "$msg"; else fail "$name" "exit $rc: ${msg:-} $(tail -2 "$d.txt")"; fi
        done
    else
        fail ckpt_np4_is_one_file "$(tail -3 "$T/cut.txt") $(cat "$T/info.txt" 2>/dev/null | tail -2)"
    fi
fi

# ---- checkpoints written in the background (ckpt_async): rank 0 gathers the shards into its snapshot --------
# and its writer thread writes it while every rank goes on. The files equal those of synchronous saves, and
# the run still tracks one process. Each write is held 1 s (test aid) so that it is in flight for a while.
if [ $SAN = 0 ]; then
    ASYNC=(--sp 2 --ckpt_every 8 --ckpt_keep 0)
    MG_CKPT_TEST_WRITE_DELAY_MS=1000 "${MPIRUN[@]}" -x MG_CKPT_TEST_WRITE_DELAY_MS -np 2 "$M" train "${RUN[@]}" "${ASYNC[@]}" \
        --out_dir "$T/bg" >"$T/bg.txt" 2>&1
    rc_bg=$?
    "${MPIRUN[@]}" -np 2 "$M" train "${RUN[@]}" "${ASYNC[@]}" --ckpt_async false --out_dir "$T/nobg" >"$T/nobg.txt" 2>&1
    rc_sync=$?
    nbg=$(grep -cE '^saved periodic checkpoint .*ckpt_000000(08|16)\.h5 \(.*in the background' "$T/bg.txt")
    why=""
    for s in 8 16 20; do
        f=$(printf 'ckpt_%08d.h5' $s)
        d=$("$M" ckpt diff "$T/bg/$f" "$T/nobg/$f" 2>&1)
        other=$(grep -E '^(config [-+]|attribute |step|tokens)' <<<"$d" | grep -vE '^config [-+] (out_dir|ckpt_async) ')
        grep -q 'differing=0 only_a=0 only_b=0 shape_mismatch=0 max_abs_diff=0.0' <<<"$d" && [ -z "$other" ] ||
            why="$why $f: $(grep '^summary' <<<"$d") $other;"
    done
    if [ $rc_bg = 0 ] && [ $rc_sync = 0 ] && [ "$nbg" = 2 ] && [ -z "$why" ] && msg=$(compare "$T/bg" "$T/ref" 1e-5); then
        pass train_np2_background_checkpoints "steps 8 and 16 written by rank 0's writer thread, equal to synchronous saves; $msg"
    else
        fail train_np2_background_checkpoints "exit $rc_bg / $rc_sync, $nbg background saves;$why ${msg:-} $(grep -E '^(error|saved)' "$T/bg.txt" | head -3)"
    fi
fi

# ---- bad layouts: one message, every rank exits non-zero, nothing written -----------------------------------
refuse() { # name expect np args...
    local name=$1 expect=$2 np=$3
    shift 3
    local out rc
    if [ "$np" = 1 ]; then
        out=$(timeout -k 5 60 "$M" train "${RUN[@]}" --out_dir "$T/bad_$name" "$@" 2>&1)
    else
        out=$(timeout -k 5 60 mpirun -np "$np" "$M" train "${RUN[@]}" --out_dir "$T/bad_$name" "$@" 2>&1)
    fi
    rc=$?
    local n
    n=$(echo "$out" | grep -c "$expect")
    if [ $rc != 0 ] && [ $rc != 124 ] && [ "$n" = 1 ] && [ ! -e "$T/bad_$name" ]; then
        pass "refuses_$name" "exit $rc: $(echo "$out" | grep -m1 "$expect" | cut -c1-150)..."
    else
        fail "refuses_$name" "exit $rc, message seen $n times, out_dir $([ -e "$T/bad_$name" ] && echo created || echo absent): $(echo "$out" | head -3)"
    fi
}
refuse sp_not_dividing_P "does not divide the 4 ranks" 4 --sp 3
if [ $SAN = 0 ]; then
refuse slice_not_whole_chunks "nor cuts one into equal parts" 2 --sp 2 --seq_len 48 --batch_tokens 0
refuse batch_not_shared "cannot share equally" 2 --batch_tokens 256
refuse alltoall_heads "do not divide them" 4 --sp 4 --chunk_size 128 --sp_attention alltoall
refuse zigzag_megalodon "two state passes per layer" 2 --sp 2 --sp_layout zigzag
# the memory check counts a rank's share (1/P of the moments, its slice's activations) times the ranks
# of the node: 4 ranks of 150 MiB do not fit in 300 MiB, 2 do
export MG_MEMORY_LIMIT_BYTES=300M
refuse memory_of_4_ranks "x 4 ranks on this node" 4 --sp 2
unset MG_MEMORY_LIMIT_BYTES
refuse sp_without_ranks "needs 2 or more processes" 1 --sp 2
out=$(timeout -k 5 60 mpirun -np 1 "$M" train "${RUN[@]}" --out_dir "$T/bad_cfg" --lr 1e-3 : -np 1 "$M" train "${RUN[@]}" \
    --out_dir "$T/bad_cfg" --lr 2e-3 2>&1)
rc=$?
if [ $rc != 0 ] && [ $rc != 124 ] && [ "$(echo "$out" | grep -c "disagree with rank 0")" = 1 ] && [ ! -e "$T/bad_cfg" ]; then
    pass refuses_config_mismatch "$(echo "$out" | grep -m1 "disagree" | cut -c1-150)..."
else
    fail refuses_config_mismatch "exit $rc: $(echo "$out" | head -3)"
fi
fi

# ---- faults ----------------------------------------------------------------------------------------------
# Open MPI's mpirun turns a rank's death, and its own SIGTERM/SIGINT, into a kill sequence: SIGCONT, then
# after odls_base_sigkill_timeout seconds SIGTERM, then after as many again SIGKILL; SIGUSR1 it forwards to
# every rank at once. The tests use a timeout of 2 s.
wait_log() { for _ in $(seq 600); do [ -s "$1/log.jsonl" ] && return 0; sleep 0.1; done; return 1; }
LONG=(--config configs/tiny.conf --threads 1 --max_steps 1000000 --warmup_steps 1 --log_every 100000 --eval_every 0 --val_data "")
KILLSEQ=(--mca odls_base_sigkill_timeout 2)
ranks_left() { pgrep -f "^$M train .*--out_dir $1" | wc -l; }
# wait_gone PID SECONDS: 0 once PID has exited (its status in $gone_rc), 1 if still running after SECONDS
wait_gone() {
    for _ in $(seq $(($2 * 10))); do kill -0 "$1" 2>/dev/null || { wait "$1"; gone_rc=$?; return 0; }; sleep 0.1; done
    return 1
}
elapsed() { python3 -c "import time; print('%.1f' % (time.time() - $1))"; }

# a rank killed: every rank ends, mpirun non-zero, within the kill sequence (2 x 2 s) plus slack for a loaded machine
if [ $SAN = 0 ]; then
mpirun "${KILLSEQ[@]}" -np 2 "$M" train "${LONG[@]}" --sp 2 --out_dir "$T/kill" >"$T/kill.txt" 2>&1 &
job=$!
if wait_log "$T/kill"; then
    t0=$(date +%s.%N)
    kill -KILL "$(pgrep -f "^$M train .*--out_dir $T/kill" | tail -1)" # a rank, not mpirun
    if wait_gone $job 30; then
        dt=$(elapsed "$t0")
        if [ "$gone_rc" != 0 ] && [ "$(ranks_left "$T/kill")" = 0 ] && python3 -c "import sys; sys.exit(0 if $dt <= 15 else 1)"; then
            pass rank_sigkill_ends_job "mpirun exit $gone_rc ${dt} s after SIGKILL of one rank (the kill sequence takes 2 x 2 s; bound 15 s, loose for a loaded machine, a hang is 30 s), no rank left"
        else
            fail rank_sigkill_ends_job "mpirun exit $gone_rc after ${dt} s, $(ranks_left "$T/kill") ranks left"
        fi
    else
        fail rank_sigkill_ends_job "mpirun still running 30 s after a rank was killed"
        kill -KILL $job
    fi
else
    fail rank_sigkill_ends_job "the run did not start: $(tail -3 "$T/kill.txt")"
    kill -KILL $job 2>/dev/null
fi

fi

# stop_test NAME SIGNAL SECONDS: the signal to mpirun gives one coordinated checkpoint, every rank exits,
# and the run resumes from it
stop_test() {
    local name=$1 sig=$2 bound=$3 d="$T/$1"
    [ $SAN = 1 ] && bound=$((bound * 3)) # a sanitized step and save on a loaded 2-core machine take seconds
    mpirun "${KILLSEQ[@]}" -np 2 "$M" train "${LONG[@]}" --sp 2 --out_dir "$d" >"$d.txt" 2>&1 &
    local job=$!
    if ! wait_log "$d"; then
        fail "${name}_one_coordinated_checkpoint" "the run did not start: $(tail -3 "$d.txt")"
        kill -KILL $job 2>/dev/null
        return
    fi
    local t0
    t0=$(date +%s.%N)
    kill -"$sig" $job
    if ! wait_gone $job 60; then
        fail "${name}_one_coordinated_checkpoint" "mpirun still running 60 s after SIG$sig"
        kill -KILL $job
        return
    fi
    local dt n_ckpt n_msg
    dt=$(elapsed "$t0")
    n_ckpt=$(ls "$d" | grep -c '^ckpt_.*\.h5$')
    n_msg=$(grep -c "received SIG$sig" "$d.txt")
    if [ "$n_ckpt" = 1 ] && [ "$n_msg" = 1 ] && [ "$(ranks_left "$d")" = 0 ] &&
        python3 -c "import sys; sys.exit(0 if $dt <= $bound else 1)"; then
        pass "${name}_one_coordinated_checkpoint" "mpirun exit $gone_rc after ${dt} s: $(grep -m1 "saved signal checkpoint" "$d.txt" | cut -c1-90)..."
    else
        fail "${name}_one_coordinated_checkpoint" "after ${dt} s: $n_ckpt checkpoints, message $n_msg times, $(ranks_left "$d") ranks left: $(tail -3 "$d.txt")"
        return
    fi
    local step
    step=$(ls "$d" | sed -n 's/^ckpt_0*\([0-9]*\)\.h5$/\1/p')
    # (--warmup_steps 1: a stop at step 1 or 2 would leave max_steps below tiny.conf's warmup_steps 5)
    if "${MPIRUN[@]}" -np 2 "$M" train "${LONG[@]}" --sp 2 --resume auto --max_steps $((step + 2)) --warmup_steps 1 --out_dir "$d" \
        >"$d.2.txt" 2>&1 && grep -q "^done: $((step + 2)) steps" "$d.2.txt"; then
        pass "${name}_then_resume_auto" "continued from step $step to $((step + 2))"
    else
        fail "${name}_then_resume_auto" "$(tail -3 "$d.2.txt")"
    fi
}
stop_test sigusr1 USR1 20 # forwarded at once: exit 0 once the checkpoint is written (loose: a loaded machine)
[ $SAN = 1 ] || stop_test sigterm TERM 20 # delivered after the 2 s of the kill sequence; saved before the SIGKILL 2 s later

# SIGUSR1 while rank 0 writes a periodic checkpoint in the background (held 3 s by the test aid): the
# coordinated save waits for that write, so both checkpoints are published, and every rank exits 0.
if [ $SAN = 0 ]; then
    d="$T/usr1_bg"
    MG_CKPT_TEST_WRITE_DELAY_MS=3000 mpirun "${KILLSEQ[@]}" -x MG_CKPT_TEST_WRITE_DELAY_MS -np 2 "$M" train "${LONG[@]}" --sp 2 \
        --ckpt_every 5 --out_dir "$d" >"$d.txt" 2>&1 &
    job=$!
    seen=0
    for _ in $(seq 1200); do ls "$d" 2>/dev/null | grep -qE '^ckpt_00000005\.h5\..*\.tmp$' && { seen=1; break; }; kill -0 $job 2>/dev/null || break; sleep 0.05; done
    if [ $seen = 1 ]; then
        kill -USR1 $job
        if wait_gone $job 60; then
            latest=$(cat "$d/latest" 2>/dev/null)
            if [ "$gone_rc" = 0 ] && [ "$(ranks_left "$d")" = 0 ] && [ "$latest" != ckpt_00000005.h5 ] &&
                grep -qE '^saved periodic checkpoint .*ckpt_00000005\.h5 .*in the background' "$d.txt" &&
                grep -qE "^saved signal checkpoint .*$latest" "$d.txt" &&
                "$M" ckpt info "$d/ckpt_00000005.h5" >/dev/null 2>&1 && "$M" ckpt info "$d/$latest" >/dev/null 2>&1; then
                pass sigusr1_during_background_write "mpirun exit 0; ckpt_00000005.h5 (in flight) and $latest (signal) published and load"
            else
                fail sigusr1_during_background_write "mpirun exit $gone_rc, latest $latest, $(ranks_left "$d") ranks left: $(grep -E '^(saved|error|received)' "$d.txt" | tr '\n' ' ' | cut -c1-300)"
            fi
        else
            fail sigusr1_during_background_write "mpirun still running 60 s after SIGUSR1"
            kill -KILL $job
        fi
    else
        fail sigusr1_during_background_write "no write of step 5 seen in flight: $(tail -3 "$d.txt")"
        kill -KILL $job 2>/dev/null
    fi
fi

exit $((fails > 0))
