#!/usr/bin/env bash
# CPU training-step throughput of the C trainer vs the PyTorch reference (tests/reference/bench_ref.py)
# on the same config, sequence lengths, batch and thread count. Prints a markdown table for
# docs/performance.md. Usage: scripts/bench_cpu.sh [config] [threads] [steps]
set -euo pipefail
CONFIG=${1:-configs/small.conf}
THREADS=${2:-$(nproc)}
STEPS=${3:-3}
BUILD=${MG_BUILD:-build}
[ -x "$BUILD/megalodon" ] || make -s all
echo "# $(date -u +%Y-%m-%d) $(uname -m), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $THREADS threads, $CONFIG, $STEPS timed steps after 1 warm-up"
echo "| seq_len | batch | C tokens/s | C MFU | C peak RSS | PyTorch tokens/s | PyTorch peak RSS | speed-up |"
echo "|---|---|---|---|---|---|---|---|"
for spec in "512 4" "2048 1" "8192 1"; do
    set -- $spec
    L=$1 B=$2
    ours=$("$BUILD/megalodon" bench --config "$CONFIG" --seq_len "$L" --batch_size "$B" --threads "$THREADS" --steps "$STEPS" | grep '^bench ')
    tps=$(sed -E 's/.*tokens_per_s=([0-9.]+).*/\1/' <<<"$ours")
    mfu=$(sed -E 's/.* mfu=([0-9.]+).*/\1/' <<<"$ours")
    rss=$(sed -E 's/.*peak_rss_mib=([0-9.]+).*/\1/' <<<"$ours")
    ref=$(/usr/bin/python3 tests/reference/bench_ref.py --config "$CONFIG" --seq_len "$L" --batch_size "$B" --threads "$THREADS" --steps "$STEPS")
    rtps=$(awk '/^tokens_per_s/ {print $2}' <<<"$ref")
    rrss=$(awk '/^peak_rss_mib/ {print $2}' <<<"$ref")
    printf '| %s | %s | %.0f | %.1f%% | %.0f MiB | %.0f | %.0f MiB | %.2fx |\n' "$L" "$B" "$tps" "$(awk "BEGIN{print 100*$mfu}")" "$rss" "$rtps" "$rrss" "$(awk "BEGIN{print $tps/$rtps}")"
done
