#!/usr/bin/env bash
# `megalodon bench --profile 1`: the per-op table (kernels/profile.c, docs/performance.md) has its header
# and conventions lines, and every op row has numeric ms, %, calls and GB/s columns; the matrix-product
# ops and CEMA report a numeric TFLOP/s, the element-wise ops '-'; the modelled work per step is consistent
# with bench's own FLOPs-per-token convention. On the CPU and on the CUDA kernels under the emulator
# (cuda-emu, fp32), and on a real GPU, where the "of ceiling" column must be there too.
set -u
BIN=${MG_BUILD:-build}/megalodon
T=$(mktemp -d /tmp/mg_bench_profile.XXXXXX)
trap 'rm -rf "$T"' EXIT
pass() { echo "PASS $1${2:+ ($2)}"; }
fail() { echo "FAIL $1: $2"; }
[ -x "$BIN" ] || { fail bench_profile_binary "$BIN not built (run make)"; exit 1; }

# check_table name file want_ceiling(0|1)
check_table() {
    local name=$1 f=$2 ceil=$3 bad
    grep -q '^profile (per step, 1 steps):$' "$f" && grep -q '^  # GB/s: minimum bytes moved' "$f" &&
        grep -q '^  # TFLOP/s: 2 per multiply-add' "$f" &&
        grep -qE '^  op +ms +% +calls +GB/s +TFLOP/s' "$f"
    [ $? = 0 ] && pass "${name}_header" || fail "${name}_header" "$(sed -n '/^profile/,/^  op/p' "$f" | tr '\n' '|')"
    # rows between the column header and the total: name ms "ms" pct% calls GB/s TFLOP/s [frac% mm|cp]
    bad=$(awk -v ceil="$ceil" '
        function num(x) { return x ~ /^[0-9]+(\.[0-9]+)?(e[-+][0-9]+)?$/ }
        /^  op / { on = 1; next }
        /^  total in ops/ { on = 0; total = 1; next }
        on {
            rows++
            ok = num($2) && $3 == "ms" && $4 ~ /^[0-9.]+%$/ && num($5) && num($6) && ($7 == "-" || num($7))
            if (ceil) ok = ok && NF == 9 && $8 ~ /^[0-9.]+%$/ && ($9 == "mm" || $9 == "cp"); else ok = ok && NF == 7
            if ($1 ~ /^(linear|attention|cema)_(forward|backward)$/) ok = ok && num($7)
            if ($1 ~ /^(act|rmsnorm|layernorm|rope|dropout|timestep_norm)_/ || $1 == "adamw_update") ok = ok && $7 == "-"
            if (ceil && $1 ~ /^(linear|attention)_/) ok = ok && $9 == "mm"
            if (!ok) print
            if ($1 == "linear_forward" && $6 > 0) lin = 1
        }
        END { if (rows < 10) print "only " rows " op rows"; if (!total) print "no total line"; if (!lin) print "no linear_forward with GB/s > 0" }
    ' "$f")
    [ -z "$bad" ] && pass "${name}_rows_numeric" "$(awk '/^  op /{on=1;next} /^  total/{on=0} on{n++} END{print n}' "$f") op rows" || fail "${name}_rows_numeric" "$(echo "$bad" | head -5 | tr '\n' '|')"
    # modelled FLOPs per step vs bench's convention (6 x matmul params + causal attention per token): the
    # model adds biases, CEMA and the element-wise ops, so it is a little above, never far off
    local fpt tok tf
    fpt=$(sed -n 's/^FLOPs per token \([0-9.e+-]*\) .*/\1/p' "$f")
    tok=$(sed -n 's/^bench: .* batch \([0-9]*\) x \([0-9]*\) tokens.*/\1 \2/p' "$f")
    tf=$(sed -n 's/^  total in ops .* and \([0-9.e+-]*\) TFLOP per step.*/\1/p' "$f")
    if awk -v fpt="$fpt" -v tok="$tok" -v tf="$tf" 'BEGIN { split(tok, b, " "); r = tf * 1e12 / (fpt * b[1] * b[2]);
            printf "model/convention = %.3f\n", r > "/dev/stderr"; exit !(r > 0.9 && r < 1.5) }' 2>"$T/ratio"; then
        pass "${name}_flops_consistent" "$(cat "$T/ratio")"
    else
        fail "${name}_flops_consistent" "fpt=$fpt tokens=$tok model=$tf TFLOP: $(cat "$T/ratio")"
    fi
}

"$BIN" bench --config configs/tiny.conf --steps 1 --warmup 1 --profile 1 >"$T/cpu" 2>&1 || fail bench_profile_cpu_runs "$(tail -n 3 "$T/cpu")"
check_table cpu "$T/cpu" 0
grep -q '^bench seq_len=32 batch=4 steps=1 tokens_per_s=' "$T/cpu" && pass cpu_machine_line || fail cpu_machine_line "missing"

if "$BIN" bench --config configs/tiny.conf --steps 1 --warmup 1 --profile 1 --device cuda-emu --precision fp32 >"$T/emu" 2>&1; then
    check_table emu "$T/emu" 0
elif grep -q "not built\|has no CUDA" "$T/emu"; then
    echo "SKIP emu_profile (the CUDA emulator is not built in: $(grep -m1 error "$T/emu" | cut -c1-160))"
else
    fail bench_profile_emu_runs "$(tail -n 3 "$T/emu")"
fi

if "$BIN" bench --config configs/tiny.conf --steps 1 --warmup 1 --profile 1 --device cuda >"$T/gpu" 2>&1; then
    check_table gpu "$T/gpu" 1
elif grep -q "no usable NVIDIA GPU\|has no CUDA backend" "$T/gpu"; then
    echo "SKIP gpu_profile_ceilings (no GPU: $(grep -m1 error "$T/gpu" | cut -c1-160))"
else
    fail bench_profile_gpu_runs "$(tail -n 3 "$T/gpu")"
fi
