#!/usr/bin/env bash
# GPU throughput of the CUDA backend: the ceilings (device-to-device copy, the bf16 matrix product), one
# op profile, then tokens/s and MFU of small, mega200m and mega1.3b at 4K and 32K context, one sequence
# per step, in bf16 (the training precision) and, for small, fp32. A configuration that does not fit in
# the GPU's memory is reported with the error that said so. Prints a Markdown table at the end.
#   scripts/bench_cuda.sh [--quick] [build-dir]      (--quick: small at 4K only)
# FLOP convention (design.md): 6 x (matrix-product parameters) per token + causal attention within the
# chunk; MFU against the 989.4 TFLOP/s bf16 dense peak of an H100/H200 SXM, for every precision.
set -u
QUICK=0
[ "${1:-}" = --quick ] && { QUICK=1; shift; }
BUILD=${1:-build}
M=$BUILD/megalodon
[ -x "$M" ] || { echo "bench_cuda: $M not built (make)"; exit 1; }
T=$(mktemp -d /tmp/mg_bench_cuda.XXXXXX)
trap 'rm -rf "$T"' EXIT
row() { # config seq precision steps
    local cfg=$1 L=$2 prec=$3 steps=$4 log="$T/$1-$2-$3.log"
    timeout 300 "$M" bench --config "configs/$cfg.conf" --device cuda --precision "$prec" --seq_len "$L" \
        --batch_size 1 --steps "$steps" --warmup 1 >"$log" 2>&1
    local rc=$?
    local line
    line=$(grep '^bench seq_len' "$log")
    if [ $rc -eq 0 ] && [ -n "$line" ]; then
        local tps mfu ms
        tps=$(sed -n 's/.*tokens_per_s=\([0-9.]*\).*/\1/p' <<<"$line")
        mfu=$(sed -n 's/.*mfu=\([0-9.]*\).*/\1/p' <<<"$line")
        ms=$(sed -n 's/.*ms_per_step=\([0-9.]*\).*/\1/p' <<<"$line")
        printf '| %s | %s | %s | %s | %s | %.1f %% |\n' "$cfg" "$L" "$prec" "$ms" "$tps" "$(awk -v m="$mfu" 'BEGIN{print 100*m}')" >>"$T/table"
    else
        local why
        why=$(grep -m1 -iE 'error|out of memory|cannot allocate' "$log" | cut -c1-160)
        [ $rc -eq 124 ] && why="timed out after 300 s"
        printf '| %s | %s | %s | - | - | does not run: %s |\n' "$cfg" "$L" "$prec" "${why:-exit $rc}" >>"$T/table"
    fi
    cat "$log"
}
echo "| config | seq_len | precision | ms/step | tokens/s | MFU |" >"$T/table"
echo "|---|---|---|---|---|---|" >>"$T/table"
row small 4096 bf16 5
echo "== op profile (small, 4K, bf16; each op synchronised, so launch gaps count)"
timeout 300 "$M" bench --config configs/small.conf --device cuda --precision bf16 --seq_len 4096 --batch_size 1 \
    --steps 3 --warmup 1 --profile 1 2>&1 | sed -n '/^profile/,$p'
if [ $QUICK = 0 ]; then
    row small 4096 fp32 5
    row small 32768 bf16 3
    row mega200m 4096 bf16 3
    row mega200m 32768 bf16 2
    row mega1.3b 4096 bf16 3
    row mega1.3b 32768 bf16 2
fi
echo
cat "$T/table"
