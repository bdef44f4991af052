#!/usr/bin/env bash
# Weights in and out (docs/weights.md): `megalodon import hf`, `megalodon export hf` and `megalodon import
# megalodon-torch` on small random checkpoints written in the foreign layouts by
# tests/weights_io/make_weights.py (Hugging Face safetensors with an index, official Megalodon state dicts
# saved with torch.save), each with reference logits computed from the foreign tensors themselves:
#   * the imported model's logits (build/tests/wio_logits) equal the reference's within float32 rounding,
#     for F32 shards, a single BF16 file with rope_theta 500000, F16 shards with tied embeddings, and the
#     Megalodon state dict (2 shards, one under "model" with FSDP-wrapped names);
#   * export -> import is bit-exact (`ckpt diff`), and the export's tensors are the original file's bytes;
#   * a checkpoint trained by `train --init_from` (2 steps) exports and imports back: every tensor
#     bit-exact except norm scales, where 1 + w rounds in float32 (at most 2^-24 off);
#   * `eval` reads an imported checkpoint;
#   * missing tensors, shape mismatches, unknown names, unsupported dtypes, RoPE scaling, a rope.freqs
#     that disagrees with rope_base, duplicated shards, truncated files are refused naming the tensor, and
#     nothing is written.
set -u
cd "$(dirname "$0")/.."
BUILD=${MG_BUILD:-build}
M=$BUILD/megalodon
LOGITS=$BUILD/tests/wio_logits
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
pass() { echo "PASS $1${2:+ ($2)}"; }
fail() { echo "FAIL $1: $2"; }
[ -x "$M" ] && [ -x "$LOGITS" ] || { echo "FAIL test_weights_io: $M or $LOGITS not built (make)"; exit 1; }
if ! $M features 2>/dev/null | grep -q '^HDF5: *yes'; then
    echo "SKIP test_weights_io (this build has no HDF5, so no checkpoints; install libhdf5-dev (make deps) and rebuild)"
    exit 0
fi
if ! $PY -c 'import torch, numpy' 2>/dev/null; then
    echo "SKIP test_weights_io ($PY cannot import torch and numpy; install python3-torch python3-numpy: make deps)"
    exit 0
fi
T=$(mktemp -d /tmp/mg_test_weights_io.XXXXXX)
trap 'rm -rf "$T"' EXIT
export OMP_NUM_THREADS=2
MK=tests/weights_io/make_weights.py

# compare NAME OURS REF ROWS: max |ours - ref| relative to max |ref| within 2e-6 (float32 forward vs
# float64 reference: ~1e-7 observed)
compare() {
    local r
    r=$($PY - "$2" "$3" <<'PYEOF'
import sys, numpy as np
a, b = np.fromfile(sys.argv[1], "<f4"), np.fromfile(sys.argv[2], "<f4")
if a.shape != b.shape:
    print(f"BAD shapes {a.shape} vs {b.shape}")
else:
    e = float(np.abs(a.astype(np.float64) - b).max()); s = float(np.abs(b).max())
    print(("OK" if e <= 2e-6 * max(s, 1.0) else "BAD") + f" max_abs_err={e:.3e} max_abs_ref={s:.3e} ({a.size} logits)")
PYEOF
)
    [[ $r == OK* ]] && pass "$1" "${r#OK }" || fail "$1" "$r (tolerance 2e-6 x max|ref|)"
}
# import_logits NAME CKPT TOKENS REF: logits of CKPT on TOKENS against REF
import_logits() {
    local out
    out=$($LOGITS --ckpt "$2" --tokens "$3" --rows 2 --out "$T/logits.bin" 2>&1) || { fail "$1" "wio_logits: $out"; return; }
    compare "$1" "$T/logits.bin" "$4"
}
# expect_fail NAME PATTERN OUT_FILE CMD...: fails, says PATTERN, leaves OUT_FILE absent
expect_fail() {
    local name=$1 pat=$2 outf=$3 out rc
    shift 3
    out=$("$@" 2>&1)
    rc=$?
    if [ $rc -ne 0 ] && grep -qE -- "$pat" <<<"$out" && [ ! -e "$outf" ] && ! ls "$outf".* >/dev/null 2>&1; then
        pass "$name" "$(grep -m1 'error' <<<"$out" | cut -c1-200)"
    else
        fail "$name" "exit $rc, expected /$pat/ and no $outf; output: $(tail -n 3 <<<"$out" | cut -c1-300)"
    fi
}

# the fixtures that need no error handling of their own, in one Python process (torch imported once)
$PY $MK batch <<FIXTURES || { fail fixtures "make_weights batch"; exit 1; }
llama --dir "$T/hf_bf16" --dtype bf16 --rope_theta 500000 --seed 3 --tokens "$T/tok2.bin" --logits "$T/ref2.bin"
llama --dir "$T/hf_f16" --dtype f16 --tied --shards 3 --seed 5 --tokens "$T/tok3.bin" --logits "$T/ref3.bin"
llama --dir "$T/e1" --drop model.layers.1.mlp.up_proj.weight
llama --dir "$T/e2" --config_extra '{"intermediate_size": 40}'
llama --dir "$T/e3" --extra model.layers.0.self_attn.q_bias
llama --dir "$T/e4" --bad_dtype model.norm.weight
llama --dir "$T/e5" --config_extra '{"rope_scaling": {"type": "linear", "factor": 2.0}}'
llama --dir "$T/e6" --config_extra '{"model_type": "mistral"}'
mega --conf tests/reference/tiny.conf --prefix "$T/dup" --dup
mega --conf tests/reference/tiny.conf --prefix "$T/alpha" --extra layers.1.nffn.alpha
mega --conf tests/reference/tiny.conf --prefix "$T/unk" --extra layers.0.mega.wq.weight
FIXTURES

# ---- Hugging Face Llama: import, logits ----------------------------------------------------------------
$PY $MK llama --dir "$T/hf" --shards 2 --tokens "$T/tok.bin" --logits "$T/ref.bin" || { fail fixtures "make_weights llama"; exit 1; }
out=$($M import hf "$T/hf" "$T/a.h5" 2>&1)
[ $? -eq 0 ] && pass "import_hf_sharded_f32" "$(tail -n 1 <<<"$out")" || { fail "import_hf_sharded_f32" "$out"; exit 1; }
info=$($M ckpt info "$T/a.h5" 2>&1)
[ $? -eq 0 ] && grep -q '^status: *ok (21 tensors, all checksums verified' <<<"$info" && grep -qE '\| *arch *= llama$' <<<"$info" &&
    grep -qE '\| *num_kv_heads *= 2$' <<<"$info" && grep -qE '\| *seq_len *= 64$' <<<"$info" &&
    pass "imported_ckpt_info_ok" "$(grep '^status' <<<"$info")" || fail "imported_ckpt_info_ok" "$(tail -n 3 <<<"$info")"
import_logits "hf_f32_2shards_logits_equal_reference" "$T/a.h5" "$T/tok.bin" "$T/ref.bin"

$M import hf "$T/hf_bf16" "$T/bf16.h5" >/dev/null 2>&1 || fail "import_hf_bf16" "import failed"
$M ckpt info "$T/bf16.h5" 2>/dev/null | grep -qE '\| *rope_base *= 500000$' && pass "rope_theta_maps_to_rope_base" "500000" ||
    fail "rope_theta_maps_to_rope_base" "$($M ckpt info "$T/bf16.h5" 2>&1 | grep rope_base)"
import_logits "hf_bf16_single_file_rope500k_logits_equal_reference" "$T/bf16.h5" "$T/tok2.bin" "$T/ref2.bin"

$M import hf "$T/hf_f16" "$T/f16.h5" >/dev/null 2>&1 || fail "import_hf_f16_tied" "import failed"
import_logits "hf_f16_tied_3shards_logits_equal_reference" "$T/f16.h5" "$T/tok3.bin" "$T/ref3.bin"

# ---- export -> import ------------------------------------------------------------------------------------
out=$($M export hf "$T/a.h5" "$T/exp" --shards 2 2>&1)
if [ $? -eq 0 ] && [ -f "$T/exp/model.safetensors.index.json" ] && [ -f "$T/exp/model-00002-of-00002.safetensors" ]; then
    pass "export_hf_sharded" "$(head -n 1 <<<"$out")"
else
    fail "export_hf_sharded" "$out"
fi
$M import hf "$T/exp" "$T/b.h5" >/dev/null 2>&1
d=$($M ckpt diff "$T/a.h5" "$T/b.h5" 2>&1 | tail -n 1)
[[ $d == "summary: compared=21 identical=21 differing=0 only_a=0 only_b=0 shape_mismatch=0 max_abs_diff=0.000000000e+00"* ]] &&
    pass "export_import_roundtrip_bit_exact" "$d" || fail "export_import_roundtrip_bit_exact" "$d"
r=$($PY - "$T/hf" "$T/exp" <<'PYEOF'
import json, os, struct, sys
def read(d):
    out = {}
    for fn in os.listdir(d):
        if fn.endswith(".safetensors"):
            b = open(os.path.join(d, fn), "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n])
            for k, v in h.items():
                if k != "__metadata__":
                    s, e = v["data_offsets"]; out[k] = (v["dtype"], v["shape"], b[8 + n + s:8 + n + e])
    return out
a, b = read(sys.argv[1]), read(sys.argv[2])
c, e = json.load(open(os.path.join(sys.argv[1], "config.json"))), json.load(open(os.path.join(sys.argv[2], "config.json")))
keys = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "vocab_size", "max_position_embeddings", "rms_norm_eps", "rope_theta", "tie_word_embeddings"]
bad = [k for k in a if a[k] != b.get(k)] + [k for k in b if k not in a] + [k for k in keys if c[k] != e[k]]
print("OK" if not bad else "BAD " + " ".join(bad[:5]), len(a))
PYEOF
)
[[ $r == OK* ]] && pass "export_reproduces_the_original_hf_tensors_and_config" "${r#OK } tensors byte-identical" ||
    fail "export_reproduces_the_original_hf_tensors_and_config" "$r"

# ---- train --init_from an imported checkpoint, eval, and the trained weights' round trip -----------------
$PY - "$T" <<'PYEOF'
import os, random, struct, sys
random.seed(7)
for split, n in (("train", 20000), ("val", 2000)):
    os.makedirs(os.path.join(sys.argv[1], split))
    toks = [random.randrange(1, 256) for _ in range(n)]
    body = struct.pack("<%dH" % n, *toks)
    body += b"\0" * ((-len(body)) % 8)
    hdr = b"MGSHARD\0" + struct.pack("<IIIiQQQ", 1, 256, 2, -1, n, 1, 0) + b"\0" * 16
    with open(os.path.join(sys.argv[1], split, "s0.bin"), "wb") as f:
        f.write(hdr + body + struct.pack("<Q", 0))
PYEOF
out=$($M train --config configs/llama-tiny.conf --vocab_size 256 --model_dim 32 --ffn_hidden_dim 48 --norm_eps 1e-5 \
      --seq_len 16 --batch_size 2 --threads 2 --train_data "$T/train" --val_data "$T/val" --init_from "$T/a.h5" \
      --max_steps 2 --warmup_steps 1 --eval_every 0 --log_every 1 --out_dir "$T/run" 2>&1)
if [ $? -eq 0 ] && grep -q "initialised from $T/a.h5" <<<"$out" && grep -qE '^step +2' <<<"$out" && [ -f "$T/run/latest" ]; then
    pass "train_init_from_imported_runs_2_steps" "$(grep -m1 -E '^step +2' <<<"$out" | cut -c1-100)"
else
    fail "train_init_from_imported_runs_2_steps" "$(tail -n 4 <<<"$out")"
fi
out=$($M eval --ckpt "$T/a.h5" --data "$T/val" --seq_len 16 --batches 2 --threads 2 2>&1)
[ $? -eq 0 ] && grep -qiE 'loss' <<<"$out" && pass "eval_reads_imported_ckpt" "$(grep -m1 -i 'loss' <<<"$out" | cut -c1-100)" ||
    fail "eval_reads_imported_ckpt" "$(tail -n 3 <<<"$out")"
trained="$T/run/$(cat "$T/run/latest" 2>/dev/null)"
$M export hf "$trained" "$T/exp2" >"$T/exp2.log" 2>&1 && $M import hf "$T/exp2" "$T/c.h5" >/dev/null 2>&1
r=$($M ckpt diff "$trained" "$T/c.h5" 2>&1 | $PY -c '
import sys
worst, bad, n = 0.0, [], 0
for line in sys.stdin:
    f = line.split()
    if len(f) == 3 and f[0].startswith("model/"):
        n += 1; a = float(f[1])
        if "norm" in f[0]: worst = max(worst, a)
        elif a != 0.0: bad.append(f[0])
print(("OK" if n == 21 and not bad and worst <= 2.0 ** -24 else "BAD " + " ".join(bad[:3])) + f" norms max_abs_diff={worst:.3e} (2^-24 = {2.0**-24:.3e}), other tensors identical ({n} compared)")')
[[ $r == OK* ]] && pass "trained_ckpt_export_import" "${r#OK } $(grep -o 'note: [0-9]* norm values' "$T/exp2.log")" ||
    fail "trained_ckpt_export_import" "$r"

# ---- official Megalodon state dicts --------------------------------------------------------------------
$PY $MK mega --conf tests/reference/tiny.conf --prefix "$T/mg" --len 32 --tokens "$T/mtok.bin" --logits "$T/mref.bin" ||
    { fail fixtures "make_weights mega"; exit 1; }
out=$($M import megalodon-torch --config tests/reference/tiny.conf "$T/mg.part1.pt" "$T/mg.part2.pt" "$T/m.h5" 2>&1)
[ $? -eq 0 ] && $M ckpt info "$T/m.h5" 2>/dev/null | grep -q '^status: *ok (52 tensors' &&
    pass "import_megalodon_torch_2_shards" "$(tail -n 1 <<<"$out")" || fail "import_megalodon_torch_2_shards" "$out"
import_logits "megalodon_torch_logits_equal_reference" "$T/m.h5" "$T/mtok.bin" "$T/mref.bin"
ls "$T"/m.h5.*.tmp >/dev/null 2>&1 && fail "megalodon_torch_temp_removed" "$(ls "$T")" || pass "megalodon_torch_temp_removed"

# ---- refusals ------------------------------------------------------------------------------------------
expect_fail "refuses_missing_tensor" "tensor 'model.layers.1.mlp.up_proj.weight' \(our 'layers.1.ffn.fc3.weight'\) is missing" \
    "$T/e1.h5" $M import hf "$T/e1" "$T/e1.h5"
expect_fail "refuses_shape_mismatch" "tensor 'model.layers.0.mlp.gate_proj.weight' has shape \[48, 32\] but the config gives our 'layers.0.ffn.fc1.weight' the shape \[40, 32\]" \
    "$T/e2.h5" $M import hf "$T/e2" "$T/e2.h5"
expect_fail "refuses_unknown_tensor" "tensor 'model.layers.0.self_attn.q_bias' .*is not part of a Llama model" \
    "$T/e3.h5" $M import hf "$T/e3" "$T/e3.h5"
expect_fail "refuses_unsupported_dtype" "tensor 'model.norm.weight' .*has dtype I32; weights import reads F32, BF16, F16 and F64" \
    "$T/e4.h5" $M import hf "$T/e4" "$T/e4.h5"
expect_fail "refuses_rope_scaling" "rope_scaling is set" "$T/e5.h5" $M import hf "$T/e5" "$T/e5.h5"
expect_fail "refuses_other_model_type" "model_type is 'mistral', not 'llama'" "$T/e6.h5" $M import hf "$T/e6" "$T/e6.h5"
cp -r "$T/hf" "$T/e7"
truncate -s -100 "$T/e7/model-00002-of-00002.safetensors"
expect_fail "refuses_truncated_safetensors" "model-00002-of-00002.safetensors' is truncated" "$T/e7.h5" $M import hf "$T/e7" "$T/e7.h5"
mkdir -p "$T/e8" && cp "$T/hf/config.json" "$T/e8/"
expect_fail "refuses_directory_without_weights" "holds neither model.safetensors nor model.safetensors.index.json" \
    "$T/e8.h5" $M import hf "$T/e8" "$T/e8.h5"
expect_fail "export_refuses_megalodon" "arch is 'megalodon'; export hf writes Llama checkpoints only" "$T/e9" \
    $M export hf "$T/m.h5" "$T/e9"
sed 's/^rope_base.*/rope_base = 500000/' tests/reference/tiny.conf >"$T/rope.conf"
expect_fail "megalodon_refuses_rope_base_mismatch" "rope.freqs does not match rope_base = 500000 .*looks like 10000" "$T/m1.h5" \
    $M import megalodon-torch --config "$T/rope.conf" "$T/mg.part1.pt" "$T/mg.part2.pt" "$T/m1.h5"
sed 's/^cema_ndim.*/cema_ndim = 8/' tests/reference/tiny.conf >"$T/ndim.conf"
expect_fail "megalodon_refuses_shape_mismatch" "tensor 'layers.0.mega.cema.alpha' has shape \[32, 4, 1\] but the config gives our 'layers.0.attn.cema.alpha' the shape \[32, 8\]" \
    "$T/m2.h5" $M import megalodon-torch --config "$T/ndim.conf" "$T/mg.part1.pt" "$T/mg.part2.pt" "$T/m2.h5"
expect_fail "megalodon_refuses_missing_shard" "is missing" "$T/m3.h5" \
    $M import megalodon-torch --config tests/reference/tiny.conf "$T/mg.part1.pt" "$T/m3.h5"
expect_fail "megalodon_refuses_duplicated_tensor" "is in both .*dup.part1.pt and .*dup.part2.pt" "$T/m4.h5" \
    $M import megalodon-torch --config tests/reference/tiny.conf "$T/dup.part1.pt" "$T/dup.part2.pt" "$T/m4.h5"
expect_fail "megalodon_refuses_rescale_nffn" "layers.1.nffn.alpha: the FFN output rescaling \(rescale_nffn\) is not supported" "$T/m5.h5" \
    $M import megalodon-torch --config tests/reference/tiny.conf "$T/alpha.part1.pt" "$T/alpha.part2.pt" "$T/m5.h5"
expect_fail "megalodon_refuses_unknown_tensor" "tensor 'layers.0.mega.wq.weight' .*is not part of a Megalodon model" "$T/m6.h5" \
    $M import megalodon-torch --config tests/reference/tiny.conf "$T/unk.part1.pt" "$T/unk.part2.pt" "$T/m6.h5"
echo "not a torch file" >"$T/junk.pt"
expect_fail "megalodon_refuses_non_torch_file" "cannot read .*junk.pt with torch.load" "$T/m7.h5" \
    $M import megalodon-torch --config tests/reference/tiny.conf "$T/junk.pt" "$T/m7.h5"
exit 0
