#!/usr/bin/env bash
# `megalodon info`: exact parameter counts of the spec configs, the FLOPs and memory lines, overrides,
# and precise failures (bad key in a file names the key and the line; a bad seq_len names both values).
set -u
BIN=${MG_BUILD:-build}/megalodon
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fails=0
pass() { echo "PASS $1${2:+ ($2)}"; }
fail() { echo "FAIL $1: $2"; fails=$((fails + 1)); }

if [ ! -x "$BIN" ]; then
    echo "FAIL info_binary: $BIN not built (run make)"
    exit 1
fi

check_count() { # config expected-count
    local out
    if ! out=$("$BIN" info --config "configs/$1.conf" 2>&1); then
        fail "info_$1" "exit status non-zero: $out"
        return
    fi
    if grep -q "^parameters: $2 " <<<"$out"; then
        pass "params_$1" "$2"
    else
        fail "params_$1" "expected 'parameters: $2', got '$(grep '^parameters' <<<"$out")'"
    fi
}
check_count mega200m 220,627,968
check_count mega1.3b 1,342,832,640
check_count megalodon-7b 7,385,817,088
check_count tiny 4,185,792

out=$("$BIN" info --config configs/megalodon-7b.conf 2>&1)
n=0
for want in '^FLOPs per token (training): 47.1 GFLOP = 6 x 7,244,611,584 matmul params' \
            '6\*(c/2)\*(z+v)' '^FLOPs per step: ' '^tokens per step: 4,194,304 = 128 micro-batches of 1 x 32768' \
            'master weights (fp32)' 'AdamW moments (fp32' '^  activations (bf16)' '^  total ' \
            'one device holds the whole model' '    attn CEMA  *270,336 per layer'; do
    n=$((n + 1))
    if grep -q -- "$want" <<<"$out"; then pass "info_7b_line$n" "$want"; else fail "info_7b_line$n" "no line matching '$want'"; fi
done

# The activation breakdown is the same plan as the activations line: its total must be that figure.
act=$(grep '^  activations (bf16)' <<<"$out" | awk '{print $(NF-1), $NF}')
plan_total=$(sed -n '/^activations by buffer/,$p' <<<"$out" | grep '^  total ' | awk '{print $(NF-1), $NF}')
stats=$(sed -n '/^activations by buffer/,$p' <<<"$out" | grep -c 'float32')
if [ -n "$act" ] && [ "$act" = "$plan_total" ] && [ "$stats" -ge 3 ]; then
    pass info_activation_breakdown "activations $act = the breakdown's total; $stats float32 statistics entries"
else
    fail info_activation_breakdown "activations '$act' vs breakdown total '$plan_total' ($stats float32 entries)"
fi

# Overrides: a third layer adds exactly one layer's parameters (44,832 in tiny); fp32 has no master copy.
out=$("$BIN" info --config configs/tiny.conf --n_layers 3 --precision=fp32 2>&1)
if grep -q '^parameters: 4,230,624 ' <<<"$out" && ! grep -q 'master weights' <<<"$out"; then
    pass info_override "n_layers 3 -> 4,230,624"
else
    fail info_override "$(grep '^parameters' <<<"$out")"
fi

# A bad key in a file: fails, names the file, the line and the key, and suggests the right one.
printf 'n_layers = 2\n# comment\nmodel_dimm = 64\n' >"$TMP/bad.conf"
if out=$("$BIN" info --config "$TMP/bad.conf" 2>&1); then
    fail info_bad_key "exit status 0 for a config with an unknown key"
elif grep -q "bad.conf:3: unknown key 'model_dimm' (did you mean 'model_dim'?" <<<"$out"; then
    pass info_bad_key "$out"
else
    fail info_bad_key "message does not name file:line and key: $out"
fi

# A malformed value on the command line.
if out=$("$BIN" info --config configs/tiny.conf --seq_len 40 2>&1); then
    fail info_bad_seq_len "exit status 0 for seq_len 40 with chunk_size 16"
elif grep -q 'seq_len 40 does not fit chunk_size 16' <<<"$out"; then
    pass info_bad_seq_len "$out"
else
    fail info_bad_seq_len "$out"
fi

if out=$("$BIN" info --config configs/tiny.conf --dropout 1.5 2>&1); then
    fail info_bad_value "exit status 0 for dropout 1.5"
elif grep -q 'command line: dropout: 1.5 is out of range' <<<"$out"; then
    pass info_bad_value "$out"
else
    fail info_bad_value "$out"
fi

if out=$("$BIN" info --help 2>&1) && grep -q -- '--chunk_size INT' <<<"$out"; then
    pass info_help "usage lists the keys"
else
    fail info_help "$out"
fi

# docs/config.md lists every key with the binary's default.
missing=$("$BIN" info --help | sed -n 's/^  --\([a-z0-9_]*\) .*(default \(.*\))$/\1 \2/p' | while read -r key def; do
    grep -qF "| \`$key\` |" docs/config.md && grep -F "| \`$key\` |" docs/config.md | grep -qF "| \`$def\` |" ||
        echo "$key=$def"
done)
nkeys=$("$BIN" info --help | grep -c '^  --')
if [ -z "$missing" ] && [ "$nkeys" -ge 55 ]; then
    pass docs_config_in_sync "$nkeys keys"
else
    fail docs_config_in_sync "docs/config.md lacks or has a different default for: $missing (regenerate its key table from \`megalodon info --help\`)"
fi

[ "$fails" = 0 ]
