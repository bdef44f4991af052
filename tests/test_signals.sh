#!/usr/bin/env bash
# SIGINT / SIGTERM are honoured everywhere (docs/training.md, "Signals"): `eval`, `sample` and `prepare`
# stop within a few seconds with status 130 (SIGINT) or 143 (SIGTERM) and say so; an interrupted `prepare`
# leaves no shard set that looks complete; `train` stops during a long evaluation, still saves a
# checkpoint that loads, and exits 0. Each case starts work that would run for a minute or more, waits for
# the command's own progress line, sends the signal, and allows 10 s to finish (a liveness bound, not a
# speed measurement). Checkpoint loading is interrupted in-process by test_signals.c.
set -u
BUILD=${MG_BUILD:-build}
M=$BUILD/megalodon
T=$(mktemp -d /tmp/mg_signals_test.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
    rm -rf "$T"
}
trap cleanup EXIT
export OMP_NUM_THREADS=2
BOUND=10

pass() { echo "PASS $1${2:+ ($2)}"; }
fail() { echo "FAIL $1: $2"; }

# wait_for FILE PATTERN PID: until FILE has a line matching PATTERN (grep -E), for at most 120 s; fails
# early if PID has exited.
wait_for() {
    for _ in $(seq 1 1200); do
        grep -qE -- "$2" "$1" 2>/dev/null && return 0
        kill -0 "$3" 2>/dev/null || { grep -qE -- "$2" "$1" 2>/dev/null; return $?; }
        sleep 0.1
    done
    return 1
}
# bounded_wait PID: RC = the exit status of PID if it ends within BOUND seconds, else 999 (after SIGKILL).
bounded_wait() {
    local i
    for i in $(seq 1 $((BOUND * 20))); do
        kill -0 "$1" 2>/dev/null || break
        sleep 0.05
    done
    if kill -0 "$1" 2>/dev/null; then
        kill -KILL "$1" 2>/dev/null
        wait "$1" 2>/dev/null
        RC=999
    else
        wait "$1"
        RC=$?
    fi
}
# interrupt NAME SIG PATTERN OUTFILE CMD...: run CMD (stdout to OUTFILE, stderr to OUTFILE.err), wait for
# PATTERN in OUTFILE, send SIG, and set RC to its exit status (999: still running after BOUND seconds).
interrupt() {
    local name=$1 sig=$2 pat=$3 out=$4
    shift 4
    "$@" >"$out" 2>"$out.err" &
    local pid=$!
    PIDS+=("$pid")
    RC=998
    if ! wait_for "$out" "$pat" "$pid"; then
        fail "$name" "no line /$pat/ before the command ended; output: $(tail -n 3 "$out" "$out.err" | tr '\n' ' ' | cut -c1-300)"
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
        return 1
    fi
    kill -"$sig" "$pid"
    bounded_wait "$pid"
    return 0
}

if [ ! -d data/corpus/train ] || [ ! -d data/corpus/val ] || [ ! -f data/tokenizer/llama2.tok ]; then
    echo "# preparing the default corpus (scripts/prepare_data.sh)"
    scripts/prepare_data.sh >"$T/prepare.log" 2>&1 || { fail "prepare default corpus" "$(tail -n 5 "$T/prepare.log")"; exit 1; }
fi

# ---- prepare, SIGINT while tokenizing: the shards of an earlier prepare stay as they were ---------------
for i in 1 2 3 4; do cat data/text/austen/austen.txt; done >"$T/big.txt"   # 16 MB
$M prepare --out "$T/p" --quiet data/text/sotu >"$T/p0.log" 2>&1 || fail "prepare a first corpus" "$(tail -n 2 "$T/p0.log")"
before=$(cd "$T/p" && find . -type f | sort | xargs md5sum)
# 8 x 16 MB as eight inputs: ~10 s of tokenizing at 15 MB/s
interrupt "prepare SIGINT" INT '^prepare: 8 input' "$T/prep1.out" \
    $M prepare --out "$T/p" --doc_sep '\n\n' "$T/big.txt" "$T/big.txt" "$T/big.txt" "$T/big.txt" \
    "$T/big.txt" "$T/big.txt" "$T/big.txt" "$T/big.txt" &&
after=$(cd "$T/p" && find . -type f | sort | xargs md5sum) &&
if [ "$RC" = 130 ] && grep -q "interrupted by SIGINT" "$T/prep1.out.err" && [ "$before" = "$after" ]; then
    pass "prepare: SIGINT while tokenizing ends it with status 130; the earlier shards are untouched" \
        "$(cat "$T/prep1.out.err")"
else
    fail "prepare SIGINT" "status $RC (999: still running after ${BOUND}s); files before/after equal: $([ "$before" = "$after" ] && echo yes || echo no); $(tail -n 2 "$T/prep1.out.err" | tr '\n' ' ')"
fi

# ---- prepare, SIGTERM while writing ~40,000 small shards: none is left behind ---------------------------
interrupt "prepare SIGTERM" TERM '^prepare: tokenized 1/1' "$T/prep2.out" \
    $M prepare --out "$T/p" --doc_sep '\n\n' --shard_tokens 64 "$T/big.txt" &&
left=$(find "$T/p" -name '*.bin' | wc -l) &&
if [ "$RC" = 143 ] && grep -q "interrupted by SIGTERM" "$T/prep2.out.err" && [ "$left" = 0 ] && [ ! -e "$T/p/prepare.txt" ]; then
    pass "prepare: SIGTERM while writing shards ends it with status 143 and removes the shards written" \
        "$(cat "$T/prep2.out.err")"
else
    fail "prepare SIGTERM" "status $RC (999: still running after ${BOUND}s); $left shard(s) left, prepare.txt $([ -e "$T/p/prepare.txt" ] && echo present || echo absent); $(tail -n 2 "$T/prep2.out.err" | tr '\n' ' ')"
fi

if ! $M features 2>/dev/null | grep -q '^HDF5: *yes'; then
    echo "SKIP signals in train, eval and sample (this build has no HDF5, so no checkpoints; install libhdf5-dev (make deps) and rebuild)"
    exit 0
fi
TINY=(--config configs/tiny.conf --threads 2)

# A checkpoint to evaluate and sample from.
$M train "${TINY[@]}" --out_dir "$T/run" --max_steps 5 --eval_every 0 >"$T/run.log" 2>&1 ||
    { fail "train a checkpoint" "$(tail -n 3 "$T/run.log")"; exit 1; }
CKPT="$T/run/$(cat "$T/run/latest")"

# ---- eval: a full pass over the training shards (a minute or more), SIGINT after it has started ----------
interrupt "eval SIGINT" INT '^eval: ' "$T/eval.out" \
    $M eval --ckpt "$CKPT" --data data/corpus/train --threads 2 &&
if [ "$RC" = 130 ] && grep -q "interrupted by SIGINT" "$T/eval.out.err" && ! grep -q val_loss "$T/eval.out"; then
    pass "eval: SIGINT during the evaluation ends it with status 130 and no val_loss" "$(cat "$T/eval.out.err")"
else
    fail "eval SIGINT" "status $RC (999: still running after ${BOUND}s); $(tail -n 2 "$T/eval.out" "$T/eval.out.err" | tr '\n' ' ')"
fi

# ---- sample: 1,000,000 tokens, SIGTERM once text is streaming ---------------------------------------
interrupt "sample SIGTERM" TERM '^The.{20}' "$T/sample.out" \
    $M sample --ckpt "$CKPT" --prompt The --max_new_tokens 1000000 --threads 2 &&
if [ "$RC" = 143 ] && grep -q "interrupted by SIGTERM" "$T/sample.out.err"; then
    pass "sample: SIGTERM while generating ends it with status 143" "$(wc -c <"$T/sample.out") bytes generated"
else
    fail "sample SIGTERM" "status $RC (999: still running after ${BOUND}s); $(tail -n 2 "$T/sample.out.err" | tr '\n' ' ')"
fi

# ---- train: SIGINT during an evaluation of a minute: the evaluation stops, a checkpoint is saved first ---
interrupt "train SIGINT" INT '^out_dir: ' "$T/train.out" \
    $M train "${TINY[@]}" --out_dir "$T/t" --max_steps 1000 --eval_every 1 --eval_batches 0 \
    --val_data data/corpus/train --log_every 1 &&
info=$($M ckpt info "$T/t/$(cat "$T/t/latest" 2>/dev/null)" 2>&1)
if [ "$RC" = 0 ] && grep -q "received SIGINT at step 1" "$T/train.out" && grep -q '^step: *1$' <<<"$info" &&
    [ "$(wc -l <"$T/t/log.jsonl")" = 1 ] && ! grep -q val_loss "$T/t/log.jsonl"; then
    pass "train: SIGINT during evaluation saves the step-1 checkpoint (it loads), logs no partial val_loss, exits 0"
else
    fail "train SIGINT" "status $RC (999: still running after ${BOUND}s); $(tail -n 2 "$T/train.out" | tr '\n' ' '); ckpt info: $(head -n 3 <<<"$info" | tr '\n' ' ')"
fi
