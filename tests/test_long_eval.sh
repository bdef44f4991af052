#!/usr/bin/env bash
# Long-context evaluation (docs/evaluation.md): `megalodon eval-positions` and `megalodon passkey` on tiny
# models trained for a few steps (configs/tiny.conf, configs/llama-tiny.conf) and a randomly initialised
# one. Checks: the token-weighted mean of the position bins is the plain `eval` loss on the same windows;
# megalodon evaluated in pieces of seq_len carrying the state gives the per-position losses of one pass
# over a context of 4 x seq_len (and without the state it does not); llama refuses a context above
# seq_len; the pass-key prompts are a pure function of the seed, hold the key at the asked depth and are
# what the tokenizer makes of their text; the passkey command scores an oracle 100% and runs end to end.
set -u
BUILD=${MG_BUILD:-build}
M=$BUILD/megalodon
PY=/usr/bin/python3
T=$(mktemp -d /tmp/mg_long_eval_test.XXXXXX)
trap 'rm -rf "$T"' EXIT
# one thread: these models are tiny, and on a shared 2-core machine OpenMP's barriers cost more than they save
export OMP_NUM_THREADS=1

pass() { echo "PASS $1${2:+ ($2)}"; }
fail() { echo "FAIL $1: $2"; }
# expect_fail NAME PATTERN CMD...: the command must exit non-zero and print PATTERN (grep -E).
expect_fail() {
    local name=$1 pat=$2
    shift 2
    local out rc
    out=$("$@" 2>&1)
    rc=$?
    if [ $rc -ne 0 ] && grep -qE -- "$pat" <<<"$out"; then
        pass "$name" "$(grep -m1 -E 'error' <<<"$out" | cut -c1-200)"
    else
        fail "$name" "exit $rc, expected /$pat/; output: $(tail -n 3 <<<"$out" | cut -c1-300)"
    fi
}

if ! $M features 2>/dev/null | grep -q '^HDF5: *yes'; then
    echo "SKIP test_long_eval (this build has no HDF5, so no checkpoints; install libhdf5-dev (make deps) and rebuild)"
    exit 0
fi
if ! $PY -c 'import json' 2>/dev/null; then
    echo "SKIP test_long_eval ($PY is missing; install python3: make deps)"
    exit 0
fi
if [ ! -d data/corpus/val ] || [ ! -f data/tokenizer/llama2.tok ]; then
    echo "# preparing the default corpus (scripts/prepare_data.sh)"
    scripts/prepare_data.sh >"$T/prepare.log" 2>&1 || { fail "prepare default corpus" "$(tail -n 5 "$T/prepare.log")"; exit 1; }
fi

# ---- two tiny trained models ---------------------------------------------------------------------------------
$M train --config configs/tiny.conf --threads 1 --max_steps 6 --eval_every 6 --eval_batches 1 --out_dir "$T/mega" \
    >"$T/mega.log" 2>&1 || fail "train tiny megalodon" "$(tail -n 5 "$T/mega.log")"
$M train --config configs/llama-tiny.conf --threads 1 --max_steps 6 --eval_every 6 --eval_batches 1 \
    --out_dir "$T/llama" >"$T/llama.log" 2>&1 || fail "train tiny llama" "$(tail -n 5 "$T/llama.log")"
MEGA=$T/mega/ckpt_00000006.h5
LLAMA=$T/llama/ckpt_00000006.h5

# ---- the bins' weighted mean is the plain eval loss on the same windows ----------------------------------------
for arch in mega llama; do
    ck=$MEGA; [ $arch = llama ] && ck=$LLAMA
    ev=$($M eval --ckpt "$ck" --data data/corpus/val --batches 3 2>&1 | sed -n 's/^val_loss //p')
    $M eval-positions --ckpt "$ck" --data data/corpus/val --context 32 --bin 5 --eval_batches 3 \
        --out "$T/$arch.json" >"$T/$arch.pos" 2>&1 || fail "eval-positions $arch at seq_len" "$(tail -n 3 "$T/$arch.pos")"
    $PY - "$T/$arch.json" "$ev" "$arch" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
ev = float(sys.argv[2]) if sys.argv[2] else float("nan")
n = sum(b["tokens"] for b in d["bins"])
mean = sum(b["loss"] * b["tokens"] for b in d["bins"]) / n
ok = abs(mean - ev) <= 1e-6 and abs(d["mean_loss"] - mean) <= 1e-9 and n == d["tokens"] == 3 * 4 * 32
ok = ok and [(b["start"], b["end"]) for b in d["bins"]] == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 25), (25, 30), (30, 32)]
print(("PASS" if ok else "FAIL") + f" {sys.argv[3]}: token-weighted mean of the position bins = eval's val_loss on the same windows"
      f" ({mean:.8f} vs {ev:.6f}, |diff| {abs(mean - ev):.1e}, tol 1e-6; {n} tokens in 7 bins)")
EOF
done
grep -qE '^ +0 +5 +[0-9.]+ +60$' "$T/mega.pos" && grep -q '^mean_loss ' "$T/mega.pos" &&
    pass "eval-positions prints the table" "$(sed -n 2,3p "$T/mega.pos" | tr -s ' ' | tr '\n' '|')" ||
    fail "eval-positions table" "$(head -n 5 "$T/mega.pos")"

$M eval-positions --ckpt "$MEGA" --data data/corpus/val --context 32 --bin 8 --eval_batches 1 --out "$T/mega.csv" >/dev/null 2>&1
[ "$(head -n 1 "$T/mega.csv" 2>/dev/null)" = "bin_start,bin_end,mean_loss,tokens" ] && [ "$(wc -l <"$T/mega.csv")" = 5 ] &&
    grep -qE '^24,32,[0-9.]+,32$' "$T/mega.csv" && pass "eval-positions --out FILE.csv" "$(tail -n 1 "$T/mega.csv")" ||
    fail "eval-positions CSV" "$(cat "$T/mega.csv" 2>&1 | head -n 5)"

# ---- megalodon: 4 x seq_len in pieces carrying the state == one pass ------------------------------------------
POS=(--ckpt "$MEGA" --data data/corpus/val --context 128 --bin 1 --eval_batches 2)
$M eval-positions "${POS[@]}" --out "$T/p32.json" >"$T/p32.log" 2>&1
$M eval-positions "${POS[@]}" --piece 16 --out "$T/p16.json" >"$T/p16.log" 2>&1
$M eval-positions "${POS[@]}" --piece 128 --out "$T/p128.json" >"$T/p128.log" 2>&1
$M eval-positions "${POS[@]}" --carry_state 0 --out "$T/fresh.json" >"$T/fresh.log" 2>&1
grep -q 'recurrent in 4 pieces of 32 tokens carrying the state' "$T/p32.log" && grep -q 'one pass of 128 tokens' "$T/p128.log" &&
    pass "context 128 runs as 4 pieces of seq_len 32, --piece 128 as one pass" ||
    fail "piece layout" "$(head -n 1 "$T/p32.log") / $(head -n 1 "$T/p128.log")"
$PY - "$T" <<'EOF'
import json, sys
t = sys.argv[1]
load = lambda n: [b["loss"] for b in json.load(open(f"{t}/{n}.json"))["bins"]]
one, p32, p16, fresh = load("p128"), load("p32"), load("p16"), load("fresh")
ok = len(one) == len(p32) == len(p16) == len(fresh) == 128
d32 = max(abs(a - b) / abs(b) for a, b in zip(p32, one))
d16 = max(abs(a - b) / abs(b) for a, b in zip(p16, one))
tol = 2e-6
print(("PASS" if ok and d32 <= tol else "FAIL") + f" megalodon: 4 pieces of 32 carrying the state = one pass of 128, per position"
      f" (max rel diff {d32:.1e} over 128 positions, tol {tol:g})")
print(("PASS" if ok and d16 <= tol else "FAIL") + f" megalodon: 8 pieces of one chunk (16) carrying the state = one pass of 128"
      f" (max rel diff {d16:.1e}, tol {tol:g})")
first = max(abs(a - b) / abs(b) for a, b in zip(fresh[:32], one[:32]))
later = max(abs(a - b) / abs(b) for a, b in zip(fresh[32:], one[32:]))
ok = first <= tol and later > 100 * tol
print(("PASS" if ok else "FAIL") + f" megalodon: without the carried state (--carry_state 0) positions 32.. differ"
      f" (max rel diff {later:.1e} > {100 * tol:g}) and 0..31 do not ({first:.1e})")
EOF

# ---- refusals ---------------------------------------------------------------------------------------------------
expect_fail "llama eval-positions refuses a context above seq_len" 'no state.*RoPE positions were trained only up to seq_len' \
    $M eval-positions --ckpt "$LLAMA" --data data/corpus/val --context 64
expect_fail "llama passkey refuses a context above seq_len" 'more than this llama model.s 32 \(seq_len\)' \
    $M passkey --ckpt "$LLAMA" --context 32,64 --trials 1
expect_fail "megalodon pieces need whole chunks" 'multiples of chunk_size \(16\)' \
    $M eval-positions --ckpt "$MEGA" --data data/corpus/val --context 100
expect_fail "eval-positions needs a model" 'needs --ckpt FILE' $M eval-positions --config configs/tiny.conf
expect_fail "passkey: a context too short for the prompt" 'too short for the key line' \
    $M passkey --config configs/tiny.conf --init_seed 1 --context 30 --trials 1 --oracle 1
expect_fail "passkey: depths in [0, 1]" 'fractions in \[0, 1\]' \
    $M passkey --config configs/tiny.conf --init_seed 1 --context 64 --depths 0,1.5 --oracle 1

# ---- passkey prompts: deterministic from the seed, key at the depth, tokenizer round trip -------------------------
PK=(--config configs/tiny.conf --init_seed 1 --context 64,100,200 --depths 0,0.25,0.5,0.75,1 --trials 3 --oracle 1)
$M passkey "${PK[@]}" --seed 7 --dump_prompts "$T/a.jsonl" >"$T/pa.log" 2>&1
$M passkey "${PK[@]}" --seed 7 --dump_prompts "$T/b.jsonl" >/dev/null 2>&1
$M passkey "${PK[@]}" --seed 8 --dump_prompts "$T/c.jsonl" >/dev/null 2>&1
[ -s "$T/a.jsonl" ] && cmp -s "$T/a.jsonl" "$T/b.jsonl" && pass "passkey prompts: the same seed gives byte-identical prompts" "$(wc -l <"$T/a.jsonl") prompts, $(wc -c <"$T/a.jsonl") bytes" ||
    fail "passkey determinism" "$T/a.jsonl and $T/b.jsonl differ or are empty"
$PY - "$T" "$M" <<'EOF'
import json, math, subprocess, sys
t, m = sys.argv[1], sys.argv[2]
a = [json.loads(l) for l in open(f"{t}/a.jsonl")]
c = [json.loads(l) for l in open(f"{t}/c.jsonl")]
same = sum(x["key"] == y["key"] for x, y in zip(a, c))
keys = {x["key"] for x in a}
ok = len(a) == len(c) == 45 and same <= 2 and len(keys) >= 40 and all(len(x["key"]) == 5 and x["key"].isdigit() for x in a)
print(("PASS" if ok else "FAIL") + f" passkey prompts: another seed gives other keys ({same} of {len(a)} equal; {len(keys)} distinct keys with seed 7)")
# depth: the key line follows round(depth x sentences) filler sentences; the prompt is filled to the context
Q = "What is the pass key? The pass key is"
bad = []
for x in a:
    text, key, d = x["text"], x["key"], x["depth"]
    line = f"The pass key is {key}. Remember it."
    before = len([s for s in text.split(line)[0].split(".") if s.strip()])
    n = x["sentences"]
    ok = (text.count(line) == 1 and text.endswith(Q) and before == math.floor(d * n + 0.5)
          and abs((x["key_pos"] - 1) - d * x["filler_tokens"]) <= 8
          and x["context"] - 8 - 7 <= x["tokens"] <= x["context"] - 8 and len(x["ids"]) == x["tokens"])
    if d == 0: ok = ok and text.startswith(line) and x["key_pos"] == 1
    if d == 1: ok = ok and text.endswith(line + " " + Q)
    if not ok: bad.append((x["context"], d, x["trial"], before, n, x["key_pos"], x["tokens"]))
print(("PASS" if not bad else "FAIL") + f" passkey prompts: the key line sits after depth x sentences (rounded half up) filler sentences,"
      f" key token position within 8 of depth x filler tokens, prompt filled to context - answer tokens ({len(a)} prompts)"
      + (f"; bad: {bad[:3]}" if bad else ""))
# round trip: the ids are what `megalodon tokenize` makes of the text, and decode back to it
rt = 0
for x in a[::11]:
    ids = subprocess.run([m, "tokenize", "--text", x["text"]], capture_output=True, text=True).stdout.split()
    back = subprocess.run([m, "tokenize", "--decode", " ".join(map(str, x["ids"]))], capture_output=True, text=True).stdout
    rt += ids == [str(i) for i in x["ids"]] and back.rstrip("\n") == x["text"]
n = len(a[::11])
print(("PASS" if rt == n else "FAIL") + f" passkey prompts: ids = tokenize(text) and decode(ids) = text ({rt} of {n} prompts)")
ok = all(x["correct"] and x["answer"] == " " + x["key"] for x in a)
print(("PASS" if ok else "FAIL") + " passkey oracle: every expected key is scored correct")
EOF
grep -qE '^ +mean +1\.000 +1\.000 +1\.000$' "$T/pa.log" && grep -q '^accuracy 1.000000 (45 of 45)' "$T/pa.log" &&
    pass "passkey --oracle 1 prints a table of 1.000" "$(grep '^accuracy [0-9]' "$T/pa.log")" ||
    fail "passkey oracle table" "$(cat "$T/pa.log" | head -n 12)"

# ---- passkey end to end: a trained megalodon beyond seq_len, a random llama within its seq_len --------------------
$M passkey --ckpt "$MEGA" --context 64,128 --depths 0,0.5,1 --trials 2 --seed 3 --out "$T/pk.json" >"$T/pk.log" 2>&1
rc=$?
[ $rc -eq 0 ] && grep -qE '^ +depth +64 +128$' "$T/pk.log" && grep -qE '^ +0\.5( +[01]\.[0-9]{3}){2}$' "$T/pk.log" &&
    grep -q '^accuracy [0-9]' "$T/pk.log" && $PY -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(not (len(d["accuracy"]) == 3 and len(d["accuracy"][0]) == 2))' "$T/pk.json" &&
    pass "passkey on a trained megalodon, contexts 64 and 128 (seq_len 32: recurrent)" "$(grep '^accuracy [0-9]' "$T/pk.log")" ||
    fail "passkey megalodon" "rc $rc: $(head -n 10 "$T/pk.log")"
out=$($M passkey --config configs/llama-tiny.conf --seq_len 96 --init_seed 2 --context 64,96 --depths 0,1 --trials 2 2>&1)
rc=$?
[ $rc -eq 0 ] && grep -qE '^ +depth +64 +96$' <<<"$out" && pass "passkey on a llama within its seq_len" "$(grep '^accuracy [0-9]' <<<"$out")" ||
    fail "passkey llama" "rc $rc: $(tail -n 5 <<<"$out")"

# ---- the plot script -----------------------------------------------------------------------------------------------
if $PY -c 'import matplotlib' 2>/dev/null; then
    $PY scripts/plot_positions.py "$T/p32.json" "$T/fresh.json" "$T/llama.json" --out "$T/plots/pos.png" >"$T/plot.log" 2>&1
    $PY - "$T/plots/pos.png" <<'EOF'
import struct, sys
try:
    b = open(sys.argv[1], "rb").read()
    ok = b[:8] == b"\x89PNG\r\n\x1a\n" and b[12:16] == b"IHDR" and b[-8:-4] == b"IEND"
    w, h = struct.unpack(">II", b[16:24])
except OSError as e:
    ok, w, h = False, 0, 0
print(("PASS" if ok else "FAIL") + f" plot_positions.py writes a whole PNG of three models ({w}x{h})")
EOF
    awk 'BEGIN{print "bin_start,bin_end,mean_loss,tokens"; print "0,4,10.5,16"; print "4,8,10.25,16"}' >"$T/x.csv"
    $PY scripts/plot_positions.py "$T/x.csv" --out "$T/x.png" >/dev/null 2>&1 && [ -s "$T/x.png" ] && pass "plot_positions.py reads CSV" || fail "plot CSV" "no $T/x.png"
    echo '{"bins": 3}' >"$T/bad.json"
    out=$($PY scripts/plot_positions.py "$T/bad.json" --out "$T/bad.png" 2>&1)
    [ $? -ne 0 ] && grep -q "bad.json: not the JSON" <<<"$out" && pass "plot_positions.py names a malformed file" || fail "plot bad input" "$out"
else
    echo "SKIP plot_positions.py (python3-matplotlib is missing: make deps)"
fi
