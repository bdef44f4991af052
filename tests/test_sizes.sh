#!/usr/bin/env bash
# End to end: the up-front memory check refuses a run that does not fit (simulated
# small machine: MG_MEMORY_LIMIT_BYTES) before anything is created, `info` prints the same breakdown,
# eval_batches / --batches beyond one pass over the validation windows are capped with a note (never an
# endless pass), and a device, FIFO or directory given where a file is read (config, prepare input,
# --file_list, --prompt_file) is refused by name without hanging. tests/test_sizes.c has the unit checks.
set -u
BUILD=${MG_BUILD:-build}
M=$BUILD/megalodon
T=$(mktemp -d /tmp/mg_sizes_test.XXXXXX)
trap 'rm -rf "$T"' EXIT
export OMP_NUM_THREADS=2

pass() { echo "PASS $1${2:+ ($2)}"; }
fail() { echo "FAIL $1: $2"; }
# expect_fail NAME PATTERN CMD...: the command must exit non-zero within 60 s and print PATTERN (grep -E).
expect_fail() {
    local name=$1 pat=$2
    shift 2
    local out rc
    out=$(timeout 60 "$@" 2>&1 </dev/null)
    rc=$?
    if [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -qE -- "$pat" <<<"$out"; then
        pass "$name" "$(grep -m1 -E 'error' <<<"$out" | cut -c1-200)"
    else
        fail "$name" "exit $rc$([ $rc = 124 ] && echo ' (timed out: it hung)'), expected /$pat/; output: $(tail -n 3 <<<"$out" | cut -c1-300)"
    fi
}
TINY=(--config configs/tiny.conf --threads 2)

# ---- the memory check ------------------------------------------------------------------------------
expect_fail "train_refused_when_memory_is_short" \
    "not enough memory for this training run.*MG_MEMORY_LIMIT_BYTES=64M.*activations.*batch_size or seq_len" \
    env MG_MEMORY_LIMIT_BYTES=64M $M train "${TINY[@]}" --batch_size 512 --out_dir "$T/oom"
[ ! -e "$T/oom" ] && pass "memory_refusal_creates_nothing" "no out_dir" || fail "memory_refusal_creates_nothing" "$T/oom exists"
out=$(MG_MEMORY_LIMIT_BYTES=64M $M info "${TINY[@]}" --batch_size 512 2>&1)
if grep -q "memory check of \`train\` on this machine" <<<"$out" && grep -q "workspace and runtime margin" <<<"$out" &&
    grep -q "available: 64.00 MiB (MG_MEMORY_LIMIT_BYTES=64M): does NOT fit" <<<"$out"; then
    pass "info_prints_the_memory_check" "$(grep -m1 'available:' <<<"$out" | cut -c1-120)"
else
    fail "info_prints_the_memory_check" "$(grep -A9 'memory check' <<<"$out")"
fi
out=$($M info "${TINY[@]}" 2>&1)
grep -qE "available: .*: fits" <<<"$out" && pass "info_says_the_tiny_config_fits" "$(grep -m1 'available:' <<<"$out" | cut -c1-100)" ||
    fail "info_says_the_tiny_config_fits" "$(grep -A9 'memory check' <<<"$out")"

# ---- files that are not files ---------------------------------------------------------------------
mkfifo "$T/fifo"
mkdir -p "$T/dir"
expect_fail "train_config_dev_zero" "config file '/dev/zero' is a character device" $M train --config /dev/zero
expect_fail "train_config_directory" "config file '.*/dir' is a directory" $M train --config "$T/dir"
expect_fail "train_config_fifo" "config file '.*/fifo' is a FIFO" $M train --config "$T/fifo"
expect_fail "prepare_input_dev_zero" "input '/dev/zero' is a character device" $M prepare --out "$T/p" /dev/zero
expect_fail "prepare_input_fifo" "input '.*/fifo' is a FIFO" $M prepare --out "$T/p" "$T/fifo"
expect_fail "prepare_file_list_dev_zero" "--file_list '/dev/zero' is a character device" $M prepare --out "$T/p" --file_list /dev/zero
expect_fail "prepare_file_list_directory" "--file_list '.*/dir' is a directory" $M prepare --out "$T/p" --file_list "$T/dir"
head -c 5000 /dev/zero | tr '\0' 'x' >"$T/long_list.txt"
expect_fail "prepare_file_list_long_line" "--file_list '.*long_list.txt' line 1 is 5000 bytes long" $M prepare --out "$T/p" --file_list "$T/long_list.txt"
expect_fail "tokenizer_file_fifo" "tokenizer file '.*/fifo' is a FIFO" $M prepare --out "$T/p" --tokenizer "$T/fifo" configs/tiny.conf

# ---- eval_batches beyond one pass: needs a checkpoint (HDF5) and the tokenizer ------------------------
if ! $M features 2>/dev/null | grep -q '^HDF5: *yes'; then
    echo "SKIP test_sizes_eval (this build has no HDF5, so no checkpoints; install libhdf5-dev (make deps) and rebuild)"
    exit 0
fi
if [ ! -f data/tokenizer/llama2.tok ] || [ ! -f data/text/austen/austen.txt ]; then
    scripts/fetch_data.sh >"$T/fetch.log" 2>&1 || { echo "SKIP test_sizes_eval (scripts/fetch_data.sh failed: $(tail -n 1 "$T/fetch.log"))"; exit 0; }
fi
head -c 120000 data/text/austen/austen.txt >"$T/text.txt"
$M prepare --quiet --out "$T/data" --doc_sep '\n\n\n' --val_fraction 0.05 "$T/text.txt" >"$T/prep.log" 2>&1 ||
    { fail "prepare small corpus" "$(tail -n 3 "$T/prep.log")"; exit 0; }
out=$(timeout 300 $M train "${TINY[@]}" --train_data "$T/data/train" --val_data "$T/data/val" --out_dir "$T/run" \
    --max_steps 2 --warmup_steps 1 --eval_every 1 --eval_batches 16777216 2>&1)
rc=$?
if [ $rc -eq 0 ] && grep -qE "^note: eval_batches 16777216 is more than one pass over the validation data \([0-9]+ windows = [0-9]+ micro-batches of 4\); using [0-9]+" <<<"$out"; then
    pass "train_caps_eval_batches_to_one_pass" "$(grep -m1 '^note: eval_batches' <<<"$out")"
else
    fail "train_caps_eval_batches_to_one_pass" "rc $rc$([ $rc = 124 ] && echo ' (timed out)'): $(tail -n 3 <<<"$out")"
fi
ck=$(ls "$T"/run/ckpt_*.h5 2>/dev/null | tail -n 1)
if [ -n "$ck" ]; then
    out=$(timeout 300 $M eval --ckpt "$ck" --data "$T/data/val" --batches 1000000 2>&1)
    rc=$?
    max=$(grep -oE 'micro-batches of 4\); using [0-9]+' <<<"$out" | grep -oE '[0-9]+$')
    tokens=$(grep -oE '^tokens [0-9]+' <<<"$out" | grep -oE '[0-9]+')
    if [ $rc -eq 0 ] && [ -n "$max" ] && [ "$tokens" = "$((max * 4 * 32))" ]; then
        pass "eval_caps_batches_to_one_pass" "$max batches, $tokens tokens"
    else
        fail "eval_caps_batches_to_one_pass" "rc $rc: $(tail -n 4 <<<"$out")"
    fi
    expect_fail "eval_batches_malformed" "--batches '1e99' must be a whole number" $M eval --ckpt "$ck" --data "$T/data/val" --batches 1e99
    expect_fail "sample_prompt_file_dev_zero" "--prompt_file '/dev/zero' is a character device" $M sample --ckpt "$ck" --prompt_file /dev/zero
    expect_fail "sample_prompt_file_directory" "--prompt_file '.*/dir' is a directory" $M sample --ckpt "$ck" --prompt_file "$T/dir"
    expect_fail "eval_refused_when_memory_is_short" "not enough memory for this evaluation" \
        env MG_MEMORY_LIMIT_BYTES=1M $M eval --ckpt "$ck" --data "$T/data/val"
    expect_fail "sample_refused_when_memory_is_short" "not enough memory for this sampling" \
        env MG_MEMORY_LIMIT_BYTES=1M $M sample --ckpt "$ck" --prompt "The"
else
    fail "train_caps_eval_batches_to_one_pass" "no checkpoint in $T/run"
fi
