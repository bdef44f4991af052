#!/usr/bin/env bash
# Checkpoints written in the background (ckpt_async, docs/checkpoint.md "Background saves") by
# `megalodon train` on configs/tiny.conf:
#   * the files are those of synchronous saves (same tensors, CRCs and attributes; the config differs only
#     in out_dir and ckpt_async), and a run resumed from one continues bit-identically;
#   * training goes on while a write is in flight, a second save waits for the first (never two temp
#     files), and every checkpoint is published in order;
#   * a stop signal during an in-flight write ends with both checkpoints published and exit 0;
#   * a write that fails in the background (the file size limit lowered while it is in flight) ends the
#     run with status 1 and a message naming the file and the reason, and the previous checkpoint loads;
#   * the memory check counts the snapshot, and ckpt_async = false does without it.
# The test aid MG_CKPT_TEST_WRITE_DELAY_MS holds each write (its temp file open) long enough to observe it;
# what is checked is the order of events, never a duration.
set -u
BUILD=${MG_BUILD:-build}
M=$BUILD/megalodon
PY=/usr/bin/python3
T=$(mktemp -d /tmp/mg_ckpt_async_test.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
    rm -rf "$T"
}
trap cleanup EXIT
export OMP_NUM_THREADS=2

pass() { echo "PASS $1${2:+ ($2)}"; }
fail() { echo "FAIL $1: $2"; }

if ! $M features 2>/dev/null | grep -q '^HDF5: *yes'; then
    echo "SKIP test_ckpt_async (this build has no HDF5, so no checkpoints; install libhdf5-dev (make deps) and rebuild)"
    exit 0
fi
if [ ! -d data/corpus/train ]; then
    echo "# preparing the default corpus (scripts/prepare_data.sh)"
    scripts/prepare_data.sh >"$T/prepare.log" 2>&1 || { fail "prepare default corpus" "$(tail -n 5 "$T/prepare.log")"; exit 1; }
fi
TINY=(--config configs/tiny.conf --threads 2 --eval_every 0 --val_data "" --peak_tflops 1)
LONG=("${TINY[@]}" --max_steps 100000 --log_every 1000)
losses() { $PY -c 'import json,sys; print(" ".join(repr(json.loads(l)["loss"]) for l in open(sys.argv[1])))' "$1"; }
# same_ckpt A B [KEYS]: the two files hold the same tensors (bytes), step, tokens and attributes; their
# configs differ at most in out_dir and ckpt_async (or the keys of the regex KEYS). Prints what differs
# otherwise.
same_ckpt() {
    local keys=${3:-out_dir|ckpt_async}
    local d
    d=$($M ckpt diff "$1" "$2" 2>&1) || { echo "ckpt diff failed: $(tail -n 2 <<<"$d")"; return 1; }
    local other
    other=$(grep -E '^(config [-+]|attribute |step|tokens)' <<<"$d" | grep -vE "^config [-+] ($keys) ")
    if grep -q 'differing=0 only_a=0 only_b=0 shape_mismatch=0 max_abs_diff=0.0' <<<"$d" && [ -z "$other" ]; then
        return 0
    fi
    echo "$(grep '^summary' <<<"$d") ${other}"
    return 1
}
# wait_file DIR REGEX PID: until a file of DIR matches REGEX (60 s at most; fails early if PID has ended)
wait_file() {
    for _ in $(seq 1 1200); do
        ls "$1" 2>/dev/null | grep -qE "$2" && return 0
        kill -0 "$3" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}
# wait_pid PID: RC = its exit status, or 999 if it is still running after 60 s (then killed)
wait_pid() {
    for _ in $(seq 1 1200); do kill -0 "$1" 2>/dev/null || break; sleep 0.05; done
    if kill -0 "$1" 2>/dev/null; then
        kill -KILL "$1" 2>/dev/null
        wait "$1" 2>/dev/null
        RC=999
    else
        wait "$1"
        RC=$?
    fi
}

# ---- the same files as synchronous saves --------------------------------------------------------------
$M train "${TINY[@]}" --out_dir "$T/bg" --max_steps 12 --ckpt_every 4 --ckpt_keep 0 >"$T/bg.log" 2>&1 ||
    fail "train with background checkpoints" "$(tail -n 3 "$T/bg.log")"
$M train "${TINY[@]}" --out_dir "$T/sync" --max_steps 12 --ckpt_every 4 --ckpt_keep 0 --ckpt_async false >"$T/sync.log" 2>&1 ||
    fail "train with synchronous checkpoints" "$(tail -n 3 "$T/sync.log")"
nbg=$(grep -cE '^saved periodic checkpoint .*ckpt_0000000[48]\.h5 \(.*in the background' "$T/bg.log")
nsync=$(grep -cE '^saved periodic checkpoint .*ckpt_0000000[48]\.h5 \([0-9.]+ MB in ' "$T/sync.log")
why=""
for s in 4 8 12; do
    f=$(printf 'ckpt_%08d.h5' $s)
    w=$(same_ckpt "$T/bg/$f" "$T/sync/$f") || why="$why $f: $w;"
done
if [ "$nbg" = 2 ] && [ "$nsync" = 2 ] && [ -z "$why" ] && grep -q 'checkpoint snapshot' "$T/bg.log" &&
    ! grep -q 'checkpoint snapshot' "$T/sync.log"; then
    pass "background checkpoints equal synchronous ones" "steps 4 and 8 written in the background, 12 at the end; tensors, CRCs and attributes identical"
else
    fail "background checkpoints equal synchronous ones" "$nbg background and $nsync synchronous periodic saves;$why"
fi
[ "$(losses "$T/bg/log.jsonl")" = "$(losses "$T/sync/log.jsonl")" ] &&
    pass "ckpt_async does not change the losses" || fail "ckpt_async changes the losses" "differ"

# ---- resuming from a checkpoint written in the background is bit-exact ----------------------------------
$M train "${TINY[@]}" --out_dir "$T/res" --max_steps 12 --ckpt_every 4 --ckpt_keep 0 --resume "$T/bg/ckpt_00000004.h5" >"$T/res.log" 2>&1
rc=$?
w=$(same_ckpt "$T/res/ckpt_00000012.h5" "$T/bg/ckpt_00000012.h5" 'out_dir|resume')
if [ $rc = 0 ] && grep -q "resumed from .*ckpt_00000004.h5 at step 4" "$T/res.log" && [ -z "$w" ] &&
    [ "$(losses "$T/res/log.jsonl")" = "$($PY -c 'import json,sys; print(" ".join(repr(json.loads(l)["loss"]) for l in list(open(sys.argv[1]))[4:]))' "$T/bg/log.jsonl")" ]; then
    pass "resume from a background checkpoint is bit-identical" "steps 5-12: losses, final weights and moments"
else
    fail "resume from a background checkpoint" "rc $rc; $w $(tail -n 2 "$T/res.log")"
fi

# ---- training goes on while the write is in flight; the next save waits; never two temp files -----------
# each write is held 2 s; steps 6-9 take a fraction of that, so they run during the write of step 5, and
# the save of step 10 comes while it is still in flight
MG_CKPT_TEST_WRITE_DELAY_MS=2000 $M train "${TINY[@]}" --out_dir "$T/fl" --max_steps 14 --ckpt_every 5 --ckpt_keep 0 \
    --log_every 1 >"$T/fl.log" 2>&1 &
pid=$!
PIDS+=("$pid")
maxtmp=0
while kill -0 $pid 2>/dev/null; do
    n=$(ls "$T/fl" 2>/dev/null | grep -cE '^ckpt_.*\.h5\..*\.tmp$')
    [ "$n" -gt "$maxtmp" ] && maxtmp=$n
    sleep 0.02
done
wait $pid
rc=$?
$PY - "$T/fl.log" <<'EOF' >"$T/fl.order"
import re, sys
lines = open(sys.argv[1]).read().splitlines()
def at(pat):
    for i, l in enumerate(lines):
        if re.search(pat, l): return i
    return -1
saved5 = at(r"^saved periodic checkpoint .*ckpt_00000005\.h5 .*in the background")
saved10 = at(r"^saved periodic checkpoint .*ckpt_00000010\.h5 .*in the background")
final = at(r"^saved final checkpoint .*ckpt_00000014\.h5")
during = [int(m.group(1)) for l in lines[:saved5] for m in [re.match(r"^step +(\d+)/", l)] if m and int(m.group(1)) > 5]
print(len(during), saved5 >= 0 and 0 <= saved5 < saved10 < final)
EOF
read -r during ordered <"$T/fl.order"
if [ "$rc" = 0 ] && [ "${during:-0}" -ge 1 ] && [ "$ordered" = True ]; then
    pass "training continues while a checkpoint is written" "$during steps after step 5 were logged before its checkpoint was published"
else
    fail "training continues while a checkpoint is written" "rc $rc, $during steps logged after step 5 before it was published, order ok: $ordered; $(grep -E '^(saved|error)' "$T/fl.log" | head -n 3)"
fi
files=$(ls "$T/fl" | grep -cE '^ckpt_000000(05|10|14)\.h5$')
if [ "$rc" = 0 ] && [ "$maxtmp" = 1 ] && [ "$files" = 3 ] && [ "$(cat "$T/fl/latest")" = ckpt_00000014.h5 ] &&
    $M ckpt info "$T/fl/ckpt_00000005.h5" >/dev/null 2>&1 && $M ckpt info "$T/fl/ckpt_00000010.h5" >/dev/null 2>&1; then
    pass "a second save waits for the first" "at most $maxtmp temp file at any time; 5, 10 and 14 published in order and load"
else
    fail "a second save waits for the first" "rc $rc, up to $maxtmp temp files at once, $files of 3 checkpoints, latest $(cat "$T/fl/latest" 2>/dev/null)"
fi

# ---- a stop signal while a write is in flight: both checkpoints published, exit 0 -------------------------
MG_CKPT_TEST_WRITE_DELAY_MS=3000 $M train "${LONG[@]}" --out_dir "$T/st" --ckpt_every 5 >"$T/st.log" 2>&1 &
pid=$!
PIDS+=("$pid")
if wait_file "$T/st" '^ckpt_00000005\.h5\..*\.tmp$' $pid; then
    kill -TERM $pid
    wait_pid $pid
    latest=$(cat "$T/st/latest" 2>/dev/null)
    order=$(grep -nE '^saved (periodic|signal) checkpoint' "$T/st.log" | cut -d: -f1 | tr '\n' ' ')
    if [ "$RC" = 0 ] && grep -q "received SIGTERM" "$T/st.log" &&
        grep -qE '^saved periodic checkpoint .*ckpt_00000005\.h5 .*in the background' "$T/st.log" &&
        grep -qE "^saved signal checkpoint .*$latest" "$T/st.log" && [ "$latest" != ckpt_00000005.h5 ] &&
        [ "$(grep -nE '^saved signal' "$T/st.log" | cut -d: -f1)" -gt "$(grep -nE '^saved periodic.*ckpt_00000005' "$T/st.log" | cut -d: -f1)" ] &&
        $M ckpt info "$T/st/ckpt_00000005.h5" >/dev/null 2>&1 && $M ckpt info "$T/st/$latest" >/dev/null 2>&1 &&
        [ "$(ls "$T/st" | grep -c '\.tmp$')" = 0 ]; then
        pass "SIGTERM during a background write" "exit 0; ckpt_00000005.h5 (in flight) and $latest (signal) published and load"
    else
        fail "SIGTERM during a background write" "status $RC (999: still running after 60 s); latest $latest; saved lines at $order; $(grep -E '^(saved|error|received)' "$T/st.log" | tr '\n' ' ' | cut -c1-400)"
    fi
else
    fail "SIGTERM during a background write" "no write of step 5 seen in flight: $(tail -n 3 "$T/st.log")"
fi

# ---- a write that fails in the background: reported, status 1, the previous checkpoint loads ---------------
# The file size limit of the running process is lowered to 1 MiB once the write of step 10 is in flight
# (its temp file exists; SIGXFSZ is ignored by train, so the write fails with EFBIG).
if command -v prlimit >/dev/null; then
    MG_CKPT_TEST_WRITE_DELAY_MS=2000 $M train "${LONG[@]}" --out_dir "$T/fail" --ckpt_every 5 >"$T/fail.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    if wait_file "$T/fail" '^ckpt_00000010\.h5\..*\.tmp$' $pid && prlimit --pid $pid --fsize=1048576: ; then
        wait_pid $pid
        err=$(grep '^error:' "$T/fail.log")
        if [ "$RC" = 1 ] && grep -q "failed in the background" <<<"$err" && grep -q "ckpt_00000010.h5" <<<"$err" &&
            grep -qiE "File too large|file size" <<<"$err" && [ "$(cat "$T/fail/latest")" = ckpt_00000005.h5 ] &&
            [ ! -e "$T/fail/ckpt_00000010.h5" ] && [ "$(ls "$T/fail" | grep -c '\.tmp$')" = 0 ] &&
            $M ckpt info "$T/fail/ckpt_00000005.h5" >/dev/null 2>&1; then
            pass "a failed background write is reported and the previous checkpoint kept" "$(cut -c1-200 <<<"$err")..."
        else
            fail "failed background write" "status $RC, latest $(cat "$T/fail/latest" 2>/dev/null): $err $(tail -n 2 "$T/fail.log")"
        fi
        out=$($M train "${TINY[@]}" --out_dir "$T/fail" --max_steps 7 --resume auto 2>&1)
        grep -q "resumed from .*ckpt_00000005.h5 at step 5" <<<"$out" && grep -q "^done: 7 steps" <<<"$out" &&
            pass "the run resumes from the checkpoint before the failed write" ||
            fail "resume after a failed background write" "$(tail -n 3 <<<"$out")"
    else
        fail "failed background write" "no write of step 10 seen in flight (or prlimit failed): $(tail -n 3 "$T/fail.log")"
        kill -KILL $pid 2>/dev/null
    fi
else
    echo "SKIP failed background write (no prlimit: install util-linux)"
fi

# ---- memory: the snapshot is counted, and ckpt_async = false does without it ------------------------------
INFO=(--config configs/tiny.conf --max_steps 20 --ckpt_every 5)
snap=$($M info "${INFO[@]}" 2>&1 | grep 'checkpoint snapshot (ckpt_async)')
nosnap=$($M info "${INFO[@]}" --ckpt_async false 2>&1 | grep -c 'checkpoint snapshot')
final_only=$($M info --config configs/tiny.conf --max_steps 20 --ckpt_every 0 2>&1 | grep -c 'checkpoint snapshot')
tot=$($M info "${INFO[@]}" --ckpt_async false 2>&1 | sed -n '/memory check of/,/available/p' | awk '/^  total/ {print $2, $3}')
bytes=$($PY -c "import sys; v, u = sys.argv[1], sys.argv[2]; print(int(float(v) * {'KiB': 1024, 'MiB': 1024**2, 'GiB': 1024**3}[u]) + 4 * 1024 * 1024)" $tot)
out1=$(MG_MEMORY_LIMIT_BYTES=$bytes $M train "${TINY[@]}" --out_dir "$T/mem1" --max_steps 20 --ckpt_every 5 2>&1)
rc1=$?
out2=$(MG_MEMORY_LIMIT_BYTES=$bytes $M train "${TINY[@]}" --out_dir "$T/mem2" --max_steps 20 --ckpt_every 5 --ckpt_async false 2>&1)
rc2=$?
if grep -q '47.90 MiB' <<<"$snap" && [ "$nosnap" = 0 ] && [ "$final_only" = 0 ] && [ $rc1 != 0 ] &&
    grep -q "checkpoint snapshot 47.90 MiB" <<<"$out1" && grep -q "ckpt_async = false" <<<"$out1" && [ $rc2 = 0 ]; then
    pass "the memory check counts the checkpoint snapshot" "12 bytes x 4,185,792 parameters; refused at $bytes bytes with it, runs with ckpt_async false"
else
    fail "memory check and the snapshot" "info: '$snap', $nosnap/$final_only lines without; rc $rc1 / $rc2: $(grep error <<<"$out1" | cut -c1-300) $(tail -n 1 <<<"$out2")"
fi
