#!/usr/bin/env bash
# Fuzz smoke runs (`make fuzz`, and part of `make test`): build the libFuzzer harnesses of tests/fuzz/ with
# clang (ASan + UBSan, leak checking on) and run each for FUZZ_TIME seconds (default 8) from its seeds:
# the committed corpus tests/fuzz/corpus/NAME/ (which also holds every input that once found a bug, so
# they are re-run first) and the seeds fuzz_seeds writes at build time (tiny checkpoints), with the
# dictionary tests/fuzz/NAME.dict. A crash, a
# sanitizer report, a leak, a timeout or a violated property fails the check; the input is kept in
# $FUZZ_BUILD/crashes/. New inputs go to a scratch corpus ($FUZZ_BUILD/work/NAME, emptied every run,
# never committed). How to fuzz for hours: docs/fuzzing.md.
set -u
cd "$(dirname "$0")/.."
FUZZ_BUILD=${FUZZ_BUILD:-build-fuzz}
FUZZ_TIME=${FUZZ_TIME:-8}
# A fixed libFuzzer seed by default, so that a smoke run in `make test` explores the same inputs each time
# (up to the machine's speed); FUZZ_SEED=0 lets libFuzzer pick a random one.
FUZZ_SEED=${FUZZ_SEED:-1}
FUZZ_CC=${FUZZ_CC:-clang}
NAMES=(config shard tokenizer ckpt)

# What the harnesses need: clang with libFuzzer and the sanitizer runtimes (Debian: clang and
# libclang-rt-dev, installed by scripts/setup.sh), serial HDF5 and zlib (the checkpoint harness).
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
if ! command -v "$FUZZ_CC" >/dev/null 2>&1; then
    echo "SKIP fuzz (no $FUZZ_CC: install clang and libclang-rt-dev, e.g. make deps)"; exit 0
fi
echo 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; (void)n; return 0; }' >"$probe/f.c"
if ! "$FUZZ_CC" -fsanitize=fuzzer,address,undefined "$probe/f.c" -o "$probe/f" >"$probe/log" 2>&1; then
    echo "SKIP fuzz ($FUZZ_CC cannot build a libFuzzer binary: $(head -c 300 "$probe/log" | tr '\n' ' ')... install libclang-rt-dev, e.g. make deps)"
    exit 0
fi
# The Makefile's own check: serial HDF5 and zlib found, and not forced off (a NO_HDF5=1 build's suite
# passes NO_HDF5 down to this make through MAKEFLAGS).
if ! make --no-print-directory -s fuzz-check FUZZ_CC="$FUZZ_CC" >"$probe/check" 2>&1; then
    echo "SKIP fuzz ($(head -n 1 "$probe/check"))"; exit 0
fi

t0=$(date +%s.%N)
if ! make --no-print-directory -s -j"$(nproc)" fuzz-build FUZZ_BUILD="$FUZZ_BUILD" FUZZ_CC="$FUZZ_CC" >"$probe/build" 2>&1; then
    echo "FAIL fuzz_build: make fuzz-build failed:"; tail -n 30 "$probe/build"; exit 1
fi
if grep -q 'warning:' "$probe/build"; then
    echo "FAIL fuzz_build: warnings:"; grep -A3 'warning:' "$probe/build" | head -n 30; exit 1
fi
t1=$(date +%s.%N)
echo "PASS fuzz_build (harnesses in $FUZZ_BUILD/, $(awk "BEGIN{printf \"%.1f\", $t1 - $t0}") s)"
rm -rf "$FUZZ_BUILD/seeds"
if ! "$FUZZ_BUILD/fuzz_seeds" "$FUZZ_BUILD/seeds" >"$probe/seeds" 2>&1; then
    echo "FAIL fuzz_seeds: $(cat "$probe/seeds")"; exit 1
fi

fail=0
mkdir -p "$FUZZ_BUILD/crashes" "$FUZZ_BUILD/logs"
for name in "${NAMES[@]}"; do
    bin=$FUZZ_BUILD/fuzz_$name
    work=$FUZZ_BUILD/work/$name
    log=$FUZZ_BUILD/logs/$name.log
    rm -rf "$work"; mkdir -p "$work"
    seeds=("tests/fuzz/corpus/$name")
    [ -d "$FUZZ_BUILD/seeds/$name" ] && seeds+=("$FUZZ_BUILD/seeds/$name")
    dict=(); [ -f "tests/fuzz/$name.dict" ] && dict=(-dict="tests/fuzz/$name.dict")
    "$bin" -max_total_time="$FUZZ_TIME" -runs=1000000 -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 -seed="$FUZZ_SEED" "${dict[@]}" \
        -artifact_prefix="$FUZZ_BUILD/crashes/$name-" "$work" "${seeds[@]}" \
        >"$log" 2>&1
    rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1)
    if [ "$rc" = 0 ] && grep -q '^Done' "$log"; then
        echo "PASS fuzz_$name (${runs:-?} inputs in ${FUZZ_TIME} s, $cov; seed $(sed -n 's/^INFO: Seed: //p' "$log"))"
    else
        art=$(sed -n 's/.*Test unit written to //p' "$log" | tail -n 1)
        echo "FAIL fuzz_$name: exit status $rc; ${art:+input saved as $art (reproduce: $bin $art); }log $log:"
        grep -E 'ERROR|SUMMARY|runtime error|property violated|error:' "$log" | head -n 8 | sed 's/^/    /'
        fail=1
    fi
done
rm -rf "$FUZZ_BUILD/work"
exit $fail
