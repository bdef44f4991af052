#!/usr/bin/env bash
# Point-to-point sweep and state-scan timings over the project's MPI transport
# (build/tests/tp_sweep, tests/parallel/tp_sweep.c; docs/parallelism.md, "Measurements and the cost model"). Usage:
#   scripts/bench_transport.sh [OUT_DIR]        (default build/bench_transport/)
# Runs, each under mpirun (as root and oversubscribed if need be, like tests/test_parallel.sh):
#   -np 2  the latency / bandwidth sweep (8 B .. 64 MiB) and the scan timings   -> sweep_np2.csv
#   -np 4  the scan timings                                                      -> scan_np4.csv
#   -np 2 and -np 4 the scan timings again with glibc told to keep freed memory
#          (GLIBC_TUNABLES: no trimming, no mmap for large blocks), which separates the scan's
#          per-call scratch allocations (first-touch page faults) from the transport  -> scan_np{2,4}_keep.csv
# Prints the tables; the CSV columns are those of tp_sweep --csv. Extra tp_sweep options for every run:
# TP_SWEEP_ARGS (e.g. TP_SWEEP_ARGS="--max 1M --scan-iters 50" for a quick look). Timing figures only:
# nothing here passes or fails on a number. Without MPI in the build it prints SKIP with the reason.
set -euo pipefail
# OUT_DIR as given (relative to where the script was called); then everything from the repository root
OUT=${1:-}
if [ -n "$OUT" ] && [ "${OUT#/}" = "$OUT" ]; then OUT=$PWD/$OUT; fi
cd "$(dirname "$0")/.."
BUILD=${MG_BUILD:-build}
OUT=${OUT:-$BUILD/bench_transport}
BIN=$BUILD/tests/tp_sweep
EXTRA=${TP_SWEEP_ARGS:-}
# Open MPI refuses to run as root, and more ranks than cores, unless told (as tests/test_parallel.sh).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
KEEP_TUNABLES=glibc.malloc.trim_threshold=4294967295:glibc.malloc.mmap_threshold=4294967295

if ! command -v mpicc >/dev/null; then
    echo "SKIP bench_transport (no mpicc: the build has no MPI; install libopenmpi-dev and openmpi-bin (make deps) and rebuild)"
    exit 0
fi
if ! command -v mpirun >/dev/null; then
    echo "SKIP bench_transport (mpicc exists but mpirun is not on PATH; install openmpi-bin)"
    exit 0
fi
if make -s BUILD="$BUILD" features 2>/dev/null | grep -q 'MPI:no'; then
    echo "SKIP bench_transport (this build has no MPI: 'make features' says MPI:no, e.g. NO_MPI=1)"
    exit 0
fi
mkdir -p "$OUT"
if [ ! -x "$BIN" ] || [ tests/parallel/tp_sweep.c -nt "$BIN" ]; then
    echo "# building $BIN"
    if ! make -s -j"$(nproc)" BUILD="$BUILD" "$BIN" >"$OUT/build.log" 2>&1; then
        echo "error: building $BIN failed ($OUT/build.log):"
        tail -n 20 "$OUT/build.log"
        exit 1
    fi
fi

cores=$(nproc)
cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | sed 's/^ //')
echo "# $(date -u +%Y-%m-%d) $(uname -m), $cores cores (${cpu:-unknown CPU}), $(mpirun --version 2>/dev/null | head -n 1)"
echo "# output: $OUT"

run() { # np csv [env...] -- tp_sweep args
    local np=$1 csv=$2; shift 2
    local envs=()
    while [ "$1" != "--" ]; do envs+=(-x "$1"); shift; done
    shift
    echo
    if [ "$np" -gt "$cores" ]; then
        echo "## mpirun -np $np ${envs[*]} tp_sweep $* $EXTRA   (OVERSUBSCRIBED: $np ranks on $cores cores)"
    else
        echo "## mpirun -np $np ${envs[*]} tp_sweep $* $EXTRA"
    fi
    # shellcheck disable=SC2086  # EXTRA is a list of options
    timeout 900 mpirun -np "$np" "${envs[@]}" "$BIN" "$@" $EXTRA --csv "$OUT/$csv"
}

run 2 sweep_np2.csv -- 
run 4 scan_np4.csv -- --no-p2p
run 2 scan_np2_keep.csv "GLIBC_TUNABLES=$KEEP_TUNABLES" -- --no-p2p
run 4 scan_np4_keep.csv "GLIBC_TUNABLES=$KEEP_TUNABLES" -- --no-p2p

echo
echo "# wrote $OUT/sweep_np2.csv $OUT/scan_np4.csv $OUT/scan_np2_keep.csv $OUT/scan_np4_keep.csv"
echo "# the cost model with this machine's alpha and beta, and the scans against it:"
echo "#   scripts/sp_cost_model.py --sweep $OUT/sweep_np2.csv --compare $OUT/scan_np4.csv --compare $OUT/scan_np2_keep.csv --compare $OUT/scan_np4_keep.csv"
