#!/usr/bin/env bash
# GPU check: build the project on a bare machine (an NVIDIA GPU, its driver and nvcc, but none of the
# optional Debian packages: no HDF5, no OpenBLAS, no Open MPI), run every GPU test and the benchmark, and
# write a report. Usage:
#   scripts/gpu_check.sh [report-dir]        (default ./gpu_report; writes report-dir/report.md and logs/)
#
# Steps, each under its own `timeout`, all within a total budget (GPU_CHECK_BUDGET_S, default 420 s):
#   build       make -j$(nproc) NO_HDF5=1 NO_MPI=1 NO_BLAS=1 all (the built-in GEMM stands in for BLAS) in its
#               own build directory (GPU_CHECK_BUILD, default build-gpu: objects compiled with other options
#               in build/ are not reused, since the Makefile does not track flags), for the GPU's own
#               architecture (read from nvidia-smi; GPU_CHECK_ARCHS overrides, e.g. "80 90")
#   backend_ops test_backend_ops cuda-fp32 cuda: every op against the CPU float64 reference on the real GPU;
#               if the program dies part-way (an op that stops the run), each op is then run alone to list
#               which ones pass
#   test_cuda   the model-level GPU test, if that program exists in this build (SKIPPED with a note if not)
#   bench       megalodon bench --device cuda on configs/small.conf and configs/mega200m.conf, and small.conf
#               once more with --profile 1 (the per-op time table goes into the report)
#   memcheck,   compute-sanitizer --tool memcheck / racecheck on test_backend_ops cuda-fp32 with a few ops
#   racecheck   (GPU_CHECK_SANITIZER_OPS, substrings of op names), if compute-sanitizer is installed
# A step that fails, times out or runs out of budget is recorded and the script carries on. Without a GPU
# (nvidia-smi missing, failing, or listing none) only the build runs; every GPU step is SKIPPED (not passed).
# Exit status: with a GPU, 0 iff every step that ran passed and none was cut by the budget; without one,
# 0 iff the build succeeded. The report's path is printed at the end.
set -u

OUT=${1:-./gpu_report}
mkdir -p "$OUT/logs" || { echo "gpu_check: cannot create $OUT" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)
LOGS=$OUT/logs
REPORT=$OUT/report.md
cd "$(dirname "$0")/.." || exit 2

T_START=$(date +%s)
JOBS=${GPU_CHECK_JOBS:-$(nproc 2>/dev/null || echo 4)}
BUILD=${GPU_CHECK_BUILD:-build-gpu}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
SAN_OPS=${GPU_CHECK_SANITIZER_OPS:-cross_entropy rmsnorm timestep_norm_forward cema_forward embedding_backward}

# ---- results -----------------------------------------------------------------------------------------
S_NAME=(); S_RESULT=(); S_SECS=(); S_NOTE=()
NFAIL=0
record() { # name result seconds note
    S_NAME+=("$1"); S_RESULT+=("$2"); S_SECS+=("$3"); S_NOTE+=("$4")
    case $2 in PASS | SKIPPED*) ;; *) NFAIL=$((NFAIL + 1)) ;; esac
    printf 'gpu_check: %-28s %s (%ss)%s\n' "$1" "$2" "$3" "${4:+ - $4}"
}
md() { printf '%s\n' "$@" >>"$REPORT"; }
section() { # name result seconds note log lines [open: show the tail inline]
    md "" "### $1: **$2** (${3} s)"
    [ -n "$4" ] && md "" "$4"
    if [ -n "${5:-}" ] && [ -f "$5" ]; then
        md "" "Log: \`logs/$(basename "$5")\`, last ${6:-30} lines:" "" '```'
        tail -n "${6:-30}" "$5" | cut -c1-400 >>"$REPORT"
        md '```'
    fi
}

# Timeout for a step: its own limit, cut to what is left of the total budget. Prints 0 when too little is left.
step_timeout() {
    local own=$1 left=$((T_START + BUDGET - $(date +%s) - 5))
    if [ "$left" -lt 15 ]; then echo 0; elif [ "$own" -lt "$left" ]; then echo "$own"; else echo "$left"; fi
}
# run_timed LOG SECONDS CMD...: runs CMD with stdout+stderr to LOG; sets RC and SECS.
run_timed() {
    local log=$1 t=$2; shift 2
    local t0; t0=$(date +%s)
    { echo "\$ $*"; echo; } >"$log"
    timeout -k 10 "$t" "$@" >>"$log" 2>&1
    RC=$?
    SECS=$(($(date +%s) - t0))
    if [ "$RC" = 124 ] || [ "$RC" = 137 ]; then echo "gpu_check: killed after the step's limit of $t s (exit $RC)" >>"$log"; fi
}

# The program's last word: its last "error..." line, else its last line.
last_words() {
    local w; w=$(grep -E '^(error|Error|fatal|FATAL|terminate|Segmentation|Abort)' "$1" | tail -n1)
    [ -z "$w" ] && w=$(grep -v '^[[:space:]]*$' "$1" | tail -n1)
    printf '%s' "$w" | cut -c1-200 | tr '|' '/'
}
# Verdict on a program that prints the test_util lines (PASS/FAIL/SKIP and "# prog: N passed, ..."). On a GPU
# machine a "no GPU" skip is a failure: the GPU is there, so the test could not use it. Sets VERDICT, NOTE.
tu_verdict() { # log rc limit
    local log=$1 rc=$2 lim=$3 p f s g
    p=$(grep -c '^PASS ' "$log"); f=$(grep -c '^FAIL ' "$log"); s=$(grep -c '^SKIP ' "$log")
    g=$(grep -c '^SKIP .*no GPU' "$log")
    NOTE="$p passed, $f failed, $s skipped"
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then VERDICT=FAIL; NOTE="timed out after $lim s; $NOTE"
    elif [ "$f" -gt 0 ]; then VERDICT=FAIL
    elif [ "$rc" != 0 ]; then VERDICT=FAIL; NOTE="exit status $rc ($(last_words "$log")); $NOTE"
    elif [ "$g" -gt 0 ]; then VERDICT=FAIL; NOTE="$NOTE; skipped with 'no GPU' although nvidia-smi lists one: $(grep -m1 '^SKIP .*no GPU' "$log" | cut -c1-160 | tr '|' '/')..."
    elif [ "$p" = 0 ]; then VERDICT=FAIL; NOTE="no PASS line (the test ran nothing); $NOTE"
    else VERDICT=PASS
    fi
}

# ---- machine --------------------------------------------------------------------------------------------
: >"$REPORT"
HAVE_GPU=0
GPU_WHY=""
if ! command -v nvidia-smi >/dev/null 2>&1; then
    GPU_WHY="nvidia-smi is not installed"
elif ! timeout 30 nvidia-smi -L >"$LOGS/nvidia-smi-L.log" 2>&1; then
    GPU_WHY="nvidia-smi -L failed: $(head -c 300 "$LOGS/nvidia-smi-L.log" | tr '\n' ' ')"
elif ! grep -q '^GPU ' "$LOGS/nvidia-smi-L.log"; then
    GPU_WHY="nvidia-smi lists no GPU"
else
    HAVE_GPU=1
fi
if [ "$HAVE_GPU" = 1 ]; then BUDGET=${GPU_CHECK_BUDGET_S:-420}; else BUDGET=${GPU_CHECK_BUDGET_S:-1800}; fi
BUILD_LIMIT=${GPU_CHECK_BUILD_TIMEOUT_S:-$([ "$JOBS" -ge 8 ] && echo 210 || echo 1500)}

NVCC=$(command -v nvcc 2>/dev/null || { [ -x "$CUDA_HOME/bin/nvcc" ] && echo "$CUDA_HOME/bin/nvcc"; })
ARCHS=${GPU_CHECK_ARCHS:-}
if [ -z "$ARCHS" ] && [ "$HAVE_GPU" = 1 ]; then
    ARCHS=$(timeout 20 nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' .\r')
    case $ARCHS in *[!0-9]* | "") ARCHS="" ;; esac
fi
SANITIZER=""
for c in "$CUDA_HOME/bin/compute-sanitizer" "$(command -v compute-sanitizer 2>/dev/null)" \
    "$CUDA_HOME/compute-sanitizer/compute-sanitizer" "${NVCC:+$(dirname "$NVCC")/compute-sanitizer}"; do
    if [ -n "$c" ] && [ -x "$c" ]; then SANITIZER=$c; break; fi
done

COMMIT=$(git rev-parse HEAD 2>/dev/null) || COMMIT=""
if [ -n "$COMMIT" ]; then
    BRANCH=$(git rev-parse --abbrev-ref HEAD 2>/dev/null)
    DIRTY=$(git status --porcelain --untracked-files=no 2>/dev/null | wc -l)
    COMMIT_LINE="$COMMIT (branch $BRANCH$([ "$DIRTY" -gt 0 ] && echo ", $DIRTY modified tracked files"))"
else
    COMMIT_LINE="${GPU_CHECK_COMMIT:-unknown} (no git repository here; set GPU_CHECK_COMMIT to name it)"
fi
FPRINT=$(find Makefile src kernels parallel tests configs scripts -type f \
    \( -name '*.c' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' -o -name '*.cc' -o -name '*.conf' -o -name '*.sh' -o -name Makefile \) \
    2>/dev/null | LC_ALL=C sort | xargs sha256sum 2>/dev/null | sha256sum | cut -c1-16)

md "# GPU check report" "" \
    "- commit: $COMMIT_LINE" \
    "- source fingerprint: $FPRINT (sha256 over the sources, configs and scripts)" \
    "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')" \
    "- host: $(uname -srm), $(nproc 2>/dev/null) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo 2>/dev/null)" \
    "- compilers: $(cc --version 2>/dev/null | head -n1); nvcc: ${NVCC:-not found}" \
    "- compute-sanitizer: ${SANITIZER:-not found}" \
    "- build: \`make -j$JOBS BUILD=$BUILD NO_HDF5=1 NO_MPI=1 NO_BLAS=1${ARCHS:+ CUDA_ARCHS=\"$ARCHS\"} all\`" \
    "- time budget: $BUDGET s in all"
if [ "$HAVE_GPU" = 1 ]; then
    md "- GPU: $(grep -m1 '^GPU ' "$LOGS/nvidia-smi-L.log")"
else
    md "" "**NO GPU PRESENT** ($GPU_WHY). Only the build runs; every GPU test below is SKIPPED, which is not a pass."
fi
md "" "## nvidia-smi" "" '```'
if command -v nvidia-smi >/dev/null 2>&1; then timeout 30 nvidia-smi >>"$REPORT" 2>&1 || echo "(nvidia-smi exited with status $?)" >>"$REPORT"
else echo "nvidia-smi: not found" >>"$REPORT"; fi
md '```' "" "## nvcc --version" "" '```'
if [ -n "$NVCC" ]; then timeout 30 "$NVCC" --version >>"$REPORT" 2>&1; else echo "nvcc: not found (the real CUDA backend cannot be built)" >>"$REPORT"; fi
md '```' "" "## Steps"
[ "$HAVE_GPU" = 1 ] && echo "gpu_check: GPU: $(grep -m1 '^GPU ' "$LOGS/nvidia-smi-L.log")" || echo "gpu_check: NO GPU PRESENT ($GPU_WHY): building only, GPU tests SKIPPED"

# ---- build ----------------------------------------------------------------------------------------------
BUILD_OK=0
t=$(step_timeout "$BUILD_LIMIT")
MAKE_ARGS=(-j"$JOBS" BUILD="$BUILD" NO_HDF5=1 NO_MPI=1 NO_BLAS=1 CUDA_HOME="$CUDA_HOME")
[ -n "$ARCHS" ] && MAKE_ARGS+=(CUDA_ARCHS="$ARCHS")
echo "gpu_check: building in $BUILD (make ${MAKE_ARGS[*]} all, limit $t s) ..."
run_timed "$LOGS/build.log" "$t" make "${MAKE_ARGS[@]}" all
NWARN=$(grep -c 'warning:' "$LOGS/build.log")
FEAT=$(grep -m1 '^megalodon build:' "$LOGS/build.log")
if [ "$RC" = 0 ] && [ -x "$BUILD/megalodon" ] && [ -x "$BUILD/tests/test_backend_ops" ]; then
    BUILD_OK=1
    record build PASS "$SECS" "$NWARN warning lines"
    section build PASS "$SECS" "${FEAT:-}; $NWARN lines mention a warning."
    if [ "$NWARN" -gt 0 ]; then
        md "" '```'; grep -m 40 'warning:' "$LOGS/build.log" | cut -c1-300 >>"$REPORT"; md '```'
    fi
else
    NOTE="exit status $RC"; { [ "$RC" = 124 ] || [ "$RC" = 137 ]; } && NOTE="timed out after $t s"
    record build FAIL "$SECS" "$NOTE"
    section build FAIL "$SECS" "$NOTE. ${FEAT:-}" "$LOGS/build.log" 60
fi
BIN=$BUILD
export MG_BUILD=$BUILD

# Runs a GPU step unless it cannot: sets GO=1 when it may run (and T, its time limit).
can_run() { # name own-limit
    GO=0
    if [ "$HAVE_GPU" != 1 ]; then record "$1" "SKIPPED (no GPU)" 0 ""; section "$1" "SKIPPED (no GPU)" 0 ""; return; fi
    if [ "$BUILD_OK" != 1 ]; then record "$1" "NOT RUN (build failed)" 0 ""; section "$1" "NOT RUN (build failed)" 0 ""; return; fi
    T=$(step_timeout "$2")
    if [ "$T" = 0 ]; then record "$1" "NOT RUN (time budget spent)" 0 ""; section "$1" "NOT RUN (time budget of $BUDGET s spent)" 0 ""; return; fi
    GO=1
}

# ---- the op harness on the GPU ----------------------------------------------------------------------
can_run backend_ops "${GPU_CHECK_OPS_TIMEOUT_S:-90}"
if [ "$GO" = 1 ]; then
    log=$LOGS/backend_ops.log
    run_timed "$log" "$T" "$BIN/tests/test_backend_ops" cuda-fp32 cuda
    tu_verdict "$log" "$RC" "$T"
    if [ "$VERDICT" = PASS ] && ! grep -q '^PASS backend_ops cuda' "$log"; then VERDICT=FAIL; NOTE="no case ran on a cuda backend; $NOTE"; fi
    record backend_ops "$VERDICT" "$SECS" "$NOTE"
    section "backend_ops (test_backend_ops cuda-fp32 cuda)" "$VERDICT" "$SECS" "$NOTE" "$log" 40
    if grep -q '^FAIL ' "$log"; then
        md "" "Failed cases:" "" '```'; grep '^FAIL ' "$log" | cut -c1-400 | head -n 60 >>"$REPORT"; md '```'
    fi
    # The run died part-way (an op stopped the program): run each op alone for a per-op picture.
    if [ "$RC" != 0 ] && ! grep -qE '^# test_backend_ops: [0-9]+ passed' "$log"; then
        OPS=$(sed -n '/^#define MG_OP_LIST/,/^$/p' kernels/ops.h | grep -o 'X([a-z0-9_]*' | cut -c3-)
        md "" "The run died before its summary; each op alone (per-op limit 20 s, at most ${GPU_CHECK_PEROP_S:-75} s in all):" "" \
            "| op | result |" "|---|---|"
        p_end=$(($(date +%s) + ${GPU_CHECK_PEROP_S:-75}))
        for op in $OPS; do
            t=$(step_timeout 20)
            if [ "$t" = 0 ] || [ "$(date +%s)" -ge "$p_end" ]; then md "| $op | not run (time) |"; continue; fi
            olog=$LOGS/backend_ops.$op.log
            run_timed "$olog" "$t" "$BIN/tests/test_backend_ops" cuda-fp32 cuda "$op"
            tu_verdict "$olog" "$RC" "$t"
            why=""
            [ "$VERDICT" != PASS ] && grep -q '^FAIL ' "$olog" && why=" - $(grep -m1 '^FAIL ' "$olog" | cut -c1-160 | tr '|' '/')"
            md "| $op | $VERDICT: $NOTE$why |"
        done
    fi
fi

# ---- the model-level GPU test -------------------------------------------------------------------------
if [ "$HAVE_GPU" = 1 ] && [ "$BUILD_OK" = 1 ] && [ ! -x "$BIN/tests/test_cuda" ]; then
    record test_cuda "SKIPPED (not in this build)" 0 "$BIN/tests/test_cuda does not exist (tests/test_cuda.c not written yet?)"
    section test_cuda "SKIPPED (not in this build)" 0 "\`$BIN/tests/test_cuda\` does not exist in this build (tests/test_cuda.c is not there yet)."
else
    can_run test_cuda "${GPU_CHECK_TEST_CUDA_TIMEOUT_S:-90}"
    if [ "$GO" = 1 ]; then
        log=$LOGS/test_cuda.log
        run_timed "$log" "$T" "$BIN/tests/test_cuda"
        tu_verdict "$log" "$RC" "$T"
        record test_cuda "$VERDICT" "$SECS" "$NOTE"
        section "test_cuda" "$VERDICT" "$SECS" "$NOTE" "$log" 40
    fi
fi

# ---- training on the GPU, and the per-op profile's ceilings -------------------------------------------
# test_cuda_train.sh: tiny for 50 steps in fp32 and in bf16 on the GPU against the CPU's losses (it needs the
# default corpus: data/corpus from scripts/prepare_data.sh, carried to a machine without the network);
# test_bench_profile.sh: the bench's op table with the measured ceilings.
for st in cuda_train:tests/test_cuda_train.sh:240 bench_profile:tests/test_bench_profile.sh:120; do
    name=${st%%:*}; rest=${st#*:}; script=${rest%%:*}; lim=${rest#*:}
    if [ ! -x "$script" ]; then
        record "$name" "SKIPPED (no $script)" 0 ""; section "$name" "SKIPPED" 0 "\`$script\` is not in this tree."; continue
    fi
    if [ "$name" = cuda_train ] && [ ! -d data/corpus/train ]; then
        record "$name" "SKIPPED (no corpus)" 0 "data/corpus/train is missing: run scripts/prepare_data.sh where there is a network and bring data/ along"
        section "$name" "SKIPPED (no corpus)" 0 "data/corpus/train is missing: run scripts/prepare_data.sh where there is a network and bring data/ along."
        continue
    fi
    can_run "$name" "${GPU_CHECK_TRAIN_TIMEOUT_S:-$lim}"
    if [ "$GO" = 1 ]; then
        log=$LOGS/$name.log
        run_timed "$log" "$T" env MG_BUILD="$BIN" bash "$script"
        tu_verdict "$log" "$RC" "$T"
        record "$name" "$VERDICT" "$SECS" "$NOTE"
        section "$name ($script)" "$VERDICT" "$SECS" "$NOTE" "$log" 30
    fi
done

# ---- benchmark ------------------------------------------------------------------------------------------
BENCH_ROWS=()
BENCH_OK=0
if "$BIN/megalodon" bench --help 2>/dev/null | grep -qE -- '--device .*cuda'; then BENCH_OK=1
elif [ "$BUILD_OK" = 1 ]; then
    # TODO: megalodon bench cannot take --device cuda in this build (src/bench.c, the config's device key).
    echo "bench --device cuda: not available in this build"
fi
bench_step() { # name limit args...
    local name=$1 lim=$2; shift 2
    if [ "$BUILD_OK" = 1 ] && [ "$BENCH_OK" = 0 ]; then
        record "$name" "SKIPPED (bench --device cuda not available)" 0 ""
        section "$name" "SKIPPED" 0 "bench --device cuda: not available in this build"
        return
    fi
    can_run "$name" "$lim"
    [ "$GO" = 1 ] || return
    local log=$LOGS/$name.log
    run_timed "$log" "$T" "$BIN/megalodon" bench --device cuda "$@"
    local line; line=$(grep -m1 '^bench seq_len=' "$log")
    if [ "$RC" = 0 ] && [ -n "$line" ]; then
        VERDICT=PASS; NOTE="$(grep -m1 '^bench: ' "$log" | cut -c8-)"
        local cfg; cfg=$(basename "$2" .conf)
        BENCH_ROWS+=("$name|$cfg|$(grep -m1 '^bench: ' "$log" | sed -n 's/.*backend \(.*\)$/\1/p')|$line")
    else
        VERDICT=FAIL; NOTE="exit status $RC$({ [ "$RC" = 124 ] || [ "$RC" = 137 ]; } && echo ", timed out after $T s"): $(last_words "$log")"
    fi
    record "$name" "$VERDICT" "$SECS" "$NOTE"
    section "$name (megalodon bench --device cuda $*)" "$VERDICT" "$SECS" "$NOTE" "$log" 14
}
bench_step bench_small "${GPU_CHECK_BENCH_TIMEOUT_S:-60}" --config configs/small.conf --steps 5 --warmup 2
bench_step bench_mega200m "${GPU_CHECK_BENCH_TIMEOUT_S:-75}" --config configs/mega200m.conf --steps 3 --warmup 1
bench_step bench_small_profile "${GPU_CHECK_BENCH_TIMEOUT_S:-60}" --config configs/small.conf --steps 3 --warmup 1 --profile 1
if [ -f "$LOGS/bench_small_profile.log" ] && grep -q '^profile' "$LOGS/bench_small_profile.log"; then
    md "" "Per-op profile of small.conf (bf16 CUDA backend):" "" '```'
    sed -n '/^profile/,$p' "$LOGS/bench_small_profile.log" | head -n 80 | cut -c1-300 >>"$REPORT"
    md '```'
fi

# ---- compute-sanitizer ------------------------------------------------------------------------------------
san_step() { # tool limit
    local name=$1 lim=$2
    if [ "$HAVE_GPU" = 1 ] && [ "$BUILD_OK" = 1 ] && [ -z "$SANITIZER" ]; then
        record "$name" "SKIPPED (compute-sanitizer not found)" 0 ""
        section "$name" "SKIPPED (compute-sanitizer not found)" 0 "Looked in \$CUDA_HOME/bin, PATH and next to nvcc."
        return
    fi
    can_run "$name" "$lim"
    [ "$GO" = 1 ] || return
    local log=$LOGS/$name.log extra=()
    [ "$name" = memcheck ] && extra=(--leak-check no)
    # shellcheck disable=SC2086
    run_timed "$log" "$T" "$SANITIZER" --tool "$name" ${extra[@]+"${extra[@]}"} --error-exitcode 86 \
        "$BIN/tests/test_backend_ops" cuda-fp32 $SAN_OPS
    tu_verdict "$log" "$RC" "$T"
    local summ; summ=$(grep -E '(ERROR|RACECHECK) SUMMARY' "$log" | tail -n1 | sed 's/^=* *//')
    [ "$RC" = 86 ] && NOTE="compute-sanitizer found errors; $NOTE"
    [ -n "$summ" ] && NOTE="$NOTE; $summ"
    [ -z "$summ" ] && [ "$VERDICT" = PASS ] && { VERDICT=FAIL; NOTE="no sanitizer summary line; $NOTE"; }
    record "$name" "$VERDICT" "$SECS" "$NOTE"
    section "$name (compute-sanitizer --tool $name, ops: $SAN_OPS)" "$VERDICT" "$SECS" "$NOTE" "$log" 30
}
san_step memcheck "${GPU_CHECK_SANITIZER_TIMEOUT_S:-75}"
san_step racecheck "${GPU_CHECK_SANITIZER_TIMEOUT_S:-75}"

# ---- summary and the bench table --------------------------------------------------------------------------
TOTAL=$(($(date +%s) - T_START))
md "" "## Summary" "" "| step | result | seconds | note |" "|---|---|---|---|"
for i in "${!S_NAME[@]}"; do md "| ${S_NAME[$i]} | ${S_RESULT[$i]} | ${S_SECS[$i]} | $(printf '%s' "${S_NOTE[$i]}" | tr '|' '/' | cut -c1-300) |"; done
if [ "$HAVE_GPU" = 1 ]; then
    STATUS=$([ "$NFAIL" = 0 ] && echo "ALL PASSED" || echo "$NFAIL STEP(S) FAILED OR NOT RUN")
else
    STATUS=$([ "$BUILD_OK" = 1 ] && echo "BUILD OK; NO GPU, GPU TESTS SKIPPED" || echo "BUILD FAILED; NO GPU")
fi
md "" "**$STATUS** ($TOTAL s in all)"

md "" "## Bench (megalodon bench --device cuda)" ""
if [ "${#BENCH_ROWS[@]}" = 0 ]; then
    if [ "$BENCH_OK" = 0 ] && [ "$BUILD_OK" = 1 ]; then md "bench --device cuda: not available in this build"
    else md "No benchmark ran$([ "$HAVE_GPU" = 1 ] || echo " (no GPU)")."; fi
else
    md "| run | config | backend | seq_len | batch | tokens/s | ms/step | best ms | MFU | activations MiB | workspace MiB | peak RSS MiB |" \
        "|---|---|---|---|---|---|---|---|---|---|---|---|"
    for r in "${BENCH_ROWS[@]}"; do
        IFS='|' read -r name cfg be line <<<"$r"
        kv() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<" $line"; }
        md "| $name | $cfg | $be | $(kv seq_len) | $(kv batch) | $(kv tokens_per_s) | $(kv ms_per_step) | $(kv best_ms) | $(kv mfu) | $(kv activation_mib) | $(kv workspace_mib) | $(kv peak_rss_mib) |"
    done
fi

echo "gpu_check: $STATUS ($TOTAL s)"
echo "gpu_check: report: $REPORT"
if [ "$HAVE_GPU" = 1 ]; then [ "$NFAIL" = 0 ] && exit 0 || exit 1; fi
[ "$BUILD_OK" = 1 ] && exit 0 || exit 1
