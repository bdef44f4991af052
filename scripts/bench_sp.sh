#!/usr/bin/env bash
# Sequence-parallel benchmark (docs/parallelism.md, "Measured"): the same global batch trained for a few
# steps by 1 process and by P = 2 and 4 ranks (sp = P) with every state-scan algorithm; per run the
# median step time, the time per step inside the state exchange (forward scans, backward gradient
# messages; mean and max over ranks), and the bytes and exchanges per step and rank.
#
#   scripts/bench_sp.sh [OUT_DIR]        (default build/bench_sp; a markdown table goes to OUT_DIR/table.md)
#   ATTN=1 scripts/bench_sp.sh [OUT_DIR] (the attention paths for a chunk over the ranks: OUT_DIR/attention.md)
#
# Environment: STEPS (default 6), PS (default "2 4"), THREADS per rank (default 1), CONFIG (default
# configs/small.conf with seq_len 2048 and chunk_size 256, so that sp 4 holds 2 chunks per rank).
# On a machine with fewer cores than ranks the runs are oversubscribed: step times then measure the
# scheduler, not the algorithm; the bytes and message counts hold anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-build/bench_sp}
STEPS=${STEPS:-6}
PS=${PS:-2 4}
THREADS=${THREADS:-1}
CONFIG=${CONFIG:-configs/small.conf}
M=build/megalodon
[ -x $M ] || make -j"$(nproc)" build/megalodon >/dev/null
if ! $M features | grep -q '^MPI: *yes' || ! command -v mpirun >/dev/null; then
    echo "bench_sp: SKIP (this build has no MPI or mpirun is missing: install Open MPI (scripts/setup.sh) and rebuild)"
    exit 0
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
mkdir -p "$OUT"
ARGS=(--config "$CONFIG" --seq_len 2048 --chunk_size 256 --batch_size 1 --batch_tokens 2048 --threads "$THREADS"
    --max_steps "$STEPS" --warmup_steps 1 --eval_every 0 --val_data "" --log_every 1)
cores=$(nproc)

# median step time (s) of steps 2.. from a log.jsonl (step 1 includes the first-touch allocations)
median_step() {
    python3 - "$1" <<'EOF'
import json, sys
r = [json.loads(l) for l in open(sys.argv[1])]
e = [b["elapsed"] - a["elapsed"] for a, b in zip(r, r[1:])]
e.sort()
print("%.3f" % (e[len(e) // 2] if e else float("nan")))
EOF
}

# ATTN=1: the attention paths instead (docs/parallelism.md, "Attention across ranks"): one chunk of
# seq_len tokens over P ranks (chunk_size = seq_len = 2048), sp_attention ring, gather and alltoall (where
# the heads divide); per run the median step time and the largest resident set of a rank.
if [ "${ATTN:-0}" = 1 ]; then
    TABLE="$OUT/attention.md"
    {
        echo "| ranks | path | step s (median) | exchange s/step fwd + bwd (max over ranks) | max RSS of a rank (MB) |"
        echo "|---|---|---|---|---|"
    } >"$TABLE"
    AARGS=("${ARGS[@]}" --chunk_size 2048)
    rm -rf "$OUT/a1"
    /usr/bin/time -f "maxrss %M" $M train "${AARGS[@]}" --out_dir "$OUT/a1" >"$OUT/a1.txt" 2>&1
    echo "| 1 | (one process) | $(median_step "$OUT/a1/log.jsonl") | - | $(($(sed -nE 's/^maxrss ([0-9]+)/\1/p' "$OUT/a1.txt" | sort -n | tail -1) / 1024)) |" >>"$TABLE"
    heads=$(sed -nE 's/^num_heads *= *([0-9]+).*/\1/p' "$CONFIG")
    for P in $PS; do
        for path in ring gather alltoall; do
            [ $path = alltoall ] && [ $((heads % P)) != 0 ] && continue
            d="$OUT/a${P}_$path"
            rm -rf "$d"
            mpirun -np "$P" /usr/bin/time -f "maxrss %M" $M train "${AARGS[@]}" --sp "$P" --sp_attention $path \
                --out_dir "$d" >"$d.txt" 2>&1
            line=$(grep '^sequence parallel exchange' "$d.txt")
            read -r fwdmax bwdmax < <(sed -E 's/.*forward [0-9.]+ s\/step \(max ([0-9.]+)\), backward [0-9.]+ s\/step \(max ([0-9.]+)\).*/\1 \2/' <<<"$line")
            rss=$(($(sed -nE 's/^maxrss ([0-9]+)/\1/p' "$d.txt" | sort -n | tail -1) / 1024))
            over=""
            [ $((P * THREADS)) -gt "$cores" ] && over=" (oversubscribed)"
            echo "| $P$over | $path | $(median_step "$d/log.jsonl") | $fwdmax + $bwdmax | $rss |" >>"$TABLE"
        done
    done
    echo "bench_sp (attention paths): $(date -u +%Y-%m-%d), $(nproc) cores, $THREADS thread(s) per rank, $CONFIG at seq_len 2048, one chunk of 2048, 1 sequence per step, $STEPS steps"
    cat "$TABLE"
    exit 0
fi

TABLE="$OUT/table.md"
{
    echo "| ranks | sp | scan | step s (median) | exchange fwd s/step (max) | exchange bwd s/step (max) | state bytes/step/rank | exchanges/step/rank |"
    echo "|---|---|---|---|---|---|---|---|"
} >"$TABLE"
rm -rf "$OUT/p1"
$M train "${ARGS[@]}" --out_dir "$OUT/p1" >"$OUT/p1.txt" 2>&1
echo "| 1 | 1 | - | $(median_step "$OUT/p1/log.jsonl") | - | - | 0 | 0 |" >>"$TABLE"
for P in $PS; do
    for algo in chain pipelined allgather doubling; do
        d="$OUT/p${P}_$algo"
        rm -rf "$d"
        mpirun -np "$P" $M train "${ARGS[@]}" --sp "$P" --sp_scan $algo --out_dir "$d" >"$d.txt" 2>&1
        line=$(grep '^sequence parallel exchange' "$d.txt")
        read -r fwd fwdmax bwd bwdmax bytes msgs < <(sed -E 's/.*forward ([0-9.]+) s\/step \(max ([0-9.]+)\), backward ([0-9.]+) s\/step \(max ([0-9.]+)\).*; ([0-9]+) bytes of state summaries and gradients and ([0-9.]+) exchanges.*/\1 \2 \3 \4 \5 \6/' <<<"$line")
        over=""
        [ $((P * THREADS)) -gt "$cores" ] && over=" (oversubscribed)"
        echo "| $P$over | $P | $algo | $(median_step "$d/log.jsonl") | $fwd ($fwdmax) | $bwd ($bwdmax) | $bytes | $msgs |" >>"$TABLE"
    done
done
echo "bench_sp: $(date -u +%Y-%m-%d), $(nproc) cores, $THREADS thread(s) per rank, $CONFIG at seq_len 2048, chunk 256, 1 sequence per step, $STEPS steps"
cat "$TABLE"
