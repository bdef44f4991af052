#!/usr/bin/env bash
# End-to-end tests of `megalodon train / eval / sample` on configs/tiny.conf with the real default
# corpus: the loss falls, the log has its contract, resume is bit-identical, SIGTERM and SIGKILL lose
# nothing, continual pre-training (re-warm + data mixture) behaves and resumes exactly, and bad input is
# refused with a message that names the problem.
set -u
BUILD=${MG_BUILD:-build}
M=$BUILD/megalodon
PY=/usr/bin/python3
T=$(mktemp -d /tmp/mg_train_test.XXXXXX)
trap 'rm -rf "$T"' EXIT
export OMP_NUM_THREADS=2

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
        pass "$name" "$(grep -m1 -E 'error' <<<"$out" | cut -c1-220)"
    else
        fail "$name" "exit $rc, expected /$pat/; output: $(tail -n 3 <<<"$out" | cut -c1-300)"
    fi
}
losses() { $PY -c 'import json,sys; print(" ".join(repr(json.loads(l)["loss"]) for l in open(sys.argv[1])))' "$1"; }

# Checkpoints are HDF5: without them eval, sample and every resume check cannot run (and a "resume"
# that silently starts afresh would even reproduce the losses).
if ! $M features 2>/dev/null | grep -q '^HDF5: *yes'; then
    echo "SKIP test_train (this build has no HDF5, so no checkpoints; install libhdf5-dev (make deps) and rebuild)"
    exit 0
fi
# Python reads the logs and checkpoints: without it several checks would compare empty strings and pass.
if ! $PY -c 'import json, struct, h5py, numpy' 2>/dev/null; then
    echo "SKIP test_train ($PY cannot import json, struct, h5py and numpy; install python3 python3-h5py python3-numpy: make deps)"
    exit 0
fi

if [ ! -d data/corpus/train ] || [ ! -d data/corpus/val ]; then
    echo "# preparing the default corpus (scripts/prepare_data.sh)"
    scripts/prepare_data.sh >"$T/prepare.log" 2>&1 || { fail "prepare default corpus" "$(tail -n 5 "$T/prepare.log")"; exit 1; }
fi
TINY=(--config configs/tiny.conf --threads 2 --eval_batches 2)

# ---- training works, logs its contract ------------------------------------------------------------
out=$($M train "${TINY[@]}" --out_dir "$T/a" --max_steps 40 --eval_every 20 --log_every 10 2>&1)
rc=$?
if [ $rc -eq 0 ]; then pass "train tiny 40 steps" "$(grep -m1 '^step *40' <<<"$out" | cut -c1-120)"; else fail "train tiny 40 steps" "$(tail -n 5 <<<"$out")"; fi
$PY - "$T/a/log.jsonl" <<'EOF'
import json, math, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
keys = {"step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu"}
ok = len(rows) == 40 and all(keys <= set(r) for r in rows) and [r["step"] for r in rows] == list(range(1, 41))
print(("PASS" if ok else "FAIL") + " log.jsonl has one line per step with step, loss, lr, grad_norm, tokens_per_s, mfu" + ("" if ok else f": {rows[:2]}"))
ev = [r["step"] for r in rows if "val_loss" in r]
print(("PASS" if ev == [20, 40] else "FAIL") + f" val_loss logged on validation steps ({ev})")
first, last = rows[0]["loss"], sum(r["loss"] for r in rows[-5:]) / 5
ok = math.isclose(first, math.log(32000), rel_tol=0.06) and last < first - 1.0
print(("PASS" if ok else "FAIL") + f" loss falls from about ln 32000 ({first:.3f} -> {last:.3f} mean of the last 5)")
EOF
[ -f "$T/a/ckpt_00000040.h5" ] && [ "$(cat "$T/a/latest" 2>/dev/null)" != "" ] && pass "final checkpoint and latest pointer written" || fail "final checkpoint" "missing in $T/a"

# ---- eval and sample ------------------------------------------------------------------------------
out=$($M eval --ckpt "$T/a/ckpt_00000040.h5" --data data/corpus/val --batches 4 2>&1)
grep -qE '^val_loss [0-9]+\.[0-9]+$' <<<"$out" && pass "eval prints val_loss" "$(head -n1 <<<"$out")" || fail "eval prints val_loss" "$out"
out=$($M sample --ckpt "$T/a/ckpt_00000040.h5" --prompt "It is a truth" --max_new_tokens 12 --temperature 0.7 --top_k 20 --top_p 0.9 2>"$T/sample.err")
rc=$?
[ $rc -eq 0 ] && grep -q "^It is a truth" <<<"$out" && grep -q "generated" "$T/sample.err" && pass "sample continues the prompt" "$(tr '\n' ' ' <<<"$out" | cut -c1-80)" || fail "sample" "rc $rc: $out $(cat "$T/sample.err")"
g1=$($M sample --ckpt "$T/a/ckpt_00000040.h5" --prompt "The" --max_new_tokens 10 --temperature 0 2>/dev/null)
g2=$($M sample --ckpt "$T/a/ckpt_00000040.h5" --prompt "The" --max_new_tokens 10 --temperature 0 2>/dev/null)
[ -n "$g1" ] && [ "$g1" = "$g2" ] && pass "greedy sampling is deterministic" || fail "greedy sampling" "'$g1' vs '$g2'"

# ---- exact resume: 2N steps in one go == N steps, stop, resume N more --------------------------------
$M train "${TINY[@]}" --out_dir "$T/b" --max_steps 30 --eval_every 10 --dropout 0.1 --hidden_dropout 0.1 --attention_dropout 0.1 >/dev/null 2>&1
$M train "${TINY[@]}" --out_dir "$T/c" --max_steps 30 --eval_every 10 --dropout 0.1 --hidden_dropout 0.1 --attention_dropout 0.1 --stop_at 15 >/dev/null 2>&1
out=$($M train "${TINY[@]}" --out_dir "$T/c" --max_steps 30 --eval_every 10 --dropout 0.1 --hidden_dropout 0.1 --attention_dropout 0.1 --resume auto 2>&1)
grep -q "resumed from .*ckpt_00000015.h5 at step 15" <<<"$out" && pass "resume auto finds the newest checkpoint" || fail "resume auto" "$(head -n 3 <<<"$out")"
[ "$(losses "$T/b/log.jsonl")" = "$(losses "$T/c/log.jsonl")" ] && pass "resumed run has bit-identical losses (30 steps, dropout on)" || fail "resume losses" "differ"
d=$($M ckpt diff "$T/b/ckpt_00000030.h5" "$T/c/ckpt_00000030.h5" | grep '^summary')
grep -q "differing=0 " <<<"$d" && grep -q "max_abs_diff=0.0" <<<"$d" && pass "resumed run has bit-identical final weights and moments" "$d" || fail "resume weights" "$d"

# ---- SIGTERM writes a checkpoint and exits cleanly; the run then continues -------------------------
$M train "${TINY[@]}" --out_dir "$T/s" --max_steps 100000 --log_every 1000 >"$T/s.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do [ -f "$T/s/log.jsonl" ] && [ "$(wc -l <"$T/s/log.jsonl")" -ge 5 ] && break; sleep 0.1; done
kill -TERM $pid
wait $pid
rc=$?
step=$(tail -n1 "$T/s/log.jsonl" | $PY -c 'import json,sys; print(json.loads(sys.stdin.read())["step"])')
if [ $rc -eq 0 ] && grep -q "received SIGTERM" "$T/s.log" && $M ckpt info "$T/s/$(cat "$T/s/latest")" >/dev/null 2>&1; then
    pass "SIGTERM: checkpoint written at step $step, exit 0"
else
    fail "SIGTERM" "rc $rc; $(tail -n 3 "$T/s.log")"
fi
out=$($M train "${TINY[@]}" --out_dir "$T/s" --max_steps $((step + 3)) --resume auto 2>&1)
grep -q "resumed from .* at step $step" <<<"$out" && grep -q "done: $((step + 3)) steps" <<<"$out" && pass "run continues after SIGTERM" || fail "continue after SIGTERM" "$(tail -n 3 <<<"$out")"

# ---- SIGKILL at random moments, mostly during checkpoint writes: the newest complete one survives ---
ok=1
for delay in 0.05 0.13 0.21; do
    before=$( [ -f "$T/k/log.jsonl" ] && wc -l <"$T/k/log.jsonl" || echo 0)
    prev=$(cat "$T/k/latest" 2>/dev/null)
    $M train "${TINY[@]}" --out_dir "$T/k" --max_steps 100000 --ckpt_every 1 --ckpt_keep 2 --log_every 1000 \
        $( [ -f "$T/k/latest" ] && echo --resume auto ) >/dev/null 2>&1 &
    pid=$!
    # wait until this process has run two steps and published a checkpoint (periodic checkpoints are written
    # in the background: `latest` moves once the write has ended, not when the step is logged), then kill it
    # a little later (mid-save or mid-step)
    for _ in $(seq 1 300); do
        [ -f "$T/k/log.jsonl" ] && [ "$(wc -l <"$T/k/log.jsonl")" -ge $((before + 2)) ] &&
            [ -n "$(cat "$T/k/latest" 2>/dev/null)" ] && [ "$(cat "$T/k/latest" 2>/dev/null)" != "$prev" ] && break
        sleep 0.05
    done
    sleep $delay
    kill -KILL $pid
    wait $pid 2>/dev/null
    $M ckpt info "$T/k/$(cat "$T/k/latest")" >/dev/null 2>&1 || { ok=0; echo "# latest does not load after SIGKILL"; }
done
kstep=$($M ckpt info "$T/k/$(cat "$T/k/latest")" 2>/dev/null | awk '/^step:/ {print $2}')
out=$($M train "${TINY[@]}" --out_dir "$T/k" --max_steps $((kstep + 2)) --warmup_steps 1 --resume auto 2>&1)
grep -q "resumed from .* at step $kstep" <<<"$out" || ok=0
[ $ok = 1 ] && pass "SIGKILL during checkpoint writes (3 times): latest always loads and the run resumes" || fail "SIGKILL" "$(tail -n 3 <<<"$out")"
$PY - "$T/k/log.jsonl" <<'EOF'
import json, sys
steps = [json.loads(l)["step"] for l in open(sys.argv[1])]
ok = steps == list(range(1, len(steps) + 1))
print(("PASS" if ok else "FAIL") + f" log.jsonl after crashes and resumes has each step once, in order ({len(steps)} steps)")
EOF

# ---- continual pre-training: re-warm + data mixture, itself resumable exactly ------------------------
$M prepare --out "$T/new" --val_fraction 0.05 --quiet data/text/sotu >/dev/null 2>&1 || fail "prepare a second corpus" "prepare failed"
MIX="$T/new/train:0.95,data/corpus/train:0.05"
CONT=(--init_from "$T/a/ckpt_00000040.h5" --train_data "$MIX" --lr 2e-3 --rewarm_steps 10 --warmup_init_ratio 0.1
      --min_lr_ratio 0.05 --max_steps 60 --eval_every 0 --val_data "$T/new/val")
$M train "${TINY[@]}" "${CONT[@]}" --out_dir "$T/ct1" >"$T/ct1.log" 2>&1 || fail "continual pre-training run" "$(tail -n 3 "$T/ct1.log")"
grep -q "initialised from .*ckpt_00000040.h5" "$T/ct1.log" && pass "init_from loads the weights and starts a new schedule" || fail "init_from" "$(head -n 3 "$T/ct1.log")"
$PY - "$T/ct1/log.jsonl" <<'EOF'
import json, math, sys
lr = [json.loads(l)["lr"] for l in open(sys.argv[1])]
peak = 2e-3
ok = (len(lr) == 60 and math.isclose(lr[0], peak * (0.1 + 0.9 / 10), rel_tol=1e-9)
      and all(lr[i] < lr[i + 1] for i in range(9)) and math.isclose(lr[9], peak, rel_tol=1e-12)
      and all(lr[i] >= lr[i + 1] for i in range(9, 59)) and math.isclose(lr[59], peak * 0.05, rel_tol=1e-9))
print(("PASS" if ok else "FAIL") + f" re-warm schedule: {lr[0]:.2e} rising to {lr[9]:.2e} at step 10, cosine to {lr[59]:.2e} = 0.05 x peak at step 60")
EOF
# realised mixture vs weights (windows drawn per source, stored in the checkpoint)
$PY - "$T/ct1/ckpt_00000060.h5" <<'EOF'
import sys, h5py, math
f = h5py.File(sys.argv[1], "r")
c = [int(x) for x in f.attrs["mixture_counts"]]; w = [float(x) for x in f.attrs["mixture_weights"]]
n = sum(c); p = w[0]; sigma = math.sqrt(n * p * (1 - p))
ok = abs(c[0] - n * p) <= 5 * sigma and n == 60 * 4
print(("PASS" if ok else "FAIL") + f" realised mixture {c} over {n} sequences vs weights {w} (|{c[0]} - {n*p:.1f}| <= 5 sigma = {5*sigma:.1f})")
EOF
$M train "${TINY[@]}" "${CONT[@]}" --out_dir "$T/ct2" --stop_at 25 >/dev/null 2>&1
$M train "${TINY[@]}" "${CONT[@]}" --out_dir "$T/ct2" --resume auto >"$T/ct2.log" 2>&1
[ "$(losses "$T/ct1/log.jsonl")" = "$(losses "$T/ct2/log.jsonl")" ] && grep -q "resumed from" "$T/ct2.log" && pass "a continued run resumes exactly (losses)" || fail "continued resume" "losses differ"
d=$($M ckpt diff "$T/ct1/ckpt_00000060.h5" "$T/ct2/ckpt_00000060.h5" | grep '^summary')
grep -q "differing=0 " <<<"$d" && pass "a continued run resumes exactly (weights and moments)" || fail "continued resume weights" "$d"
expect_fail "resume refuses a different data mixture" "trained on train_data" \
    $M train "${TINY[@]}" "${CONT[@]}" --out_dir "$T/ct2" --resume auto --max_steps 70 --train_data data/corpus/train
$M train "${TINY[@]}" "${CONT[@]}" --init_optimizer true --out_dir "$T/ct3" --max_steps 12 >"$T/ct3.log" 2>&1 && grep -q "with its AdamW moments" "$T/ct3.log" && pass "init_from with init_optimizer loads the moments" || fail "init_optimizer" "$(tail -n 2 "$T/ct3.log")"

# ---- every log written above is strict JSON, line by line (fresh, resumed, killed and resumed, continued)
$PY - "$T"/*/log.jsonl <<'EOF'
import json, sys
def refuse(c): raise ValueError("not JSON: " + c)   # json.loads would accept NaN and Infinity
bad, lines = [], 0
for path in sys.argv[1:]:
    for i, l in enumerate(open(path, encoding="utf-8"), 1):
        lines += 1
        try:
            r = json.loads(l, parse_constant=refuse)
            if not isinstance(r, dict) or type(r.get("step")) is not int: raise ValueError("no integer step")
        except ValueError as e:
            bad.append(f"{path}:{i}: {e}")
ok = not bad and len(sys.argv) > 5 and lines > 200
print(("PASS" if ok else "FAIL") + f" every line of {len(sys.argv) - 1} log.jsonl files ({lines} lines) is a strict JSON object with an integer step" + ("" if ok else f": {bad[:3]}"))
EOF

# resume trims the log by its step field whatever the spacing or key order, and keeps unreadable lines
printf '{"loss": 9.5,"step":31}\nnot a log line\n{"tokens": 1, "step" : 32 , "loss": 9.4' >>"$T/c/log.jsonl"
out=$($M train "${TINY[@]}" --out_dir "$T/c" --max_steps 31 --eval_every 10 --resume auto 2>&1)
steps=$($PY -c 'import json,sys; print(" ".join(str(json.loads(l)["step"]) if l.startswith("{") else "x" for l in open(sys.argv[1])))' "$T/c/log.jsonl")
if grep -q "dropped 2 lines of steps after 30" <<<"$out" && grep -q "kept 1 lines without a readable step" <<<"$out" &&
   [ "$steps" = "$(seq -s ' ' 1 30) x 31" ]; then
    pass "resume drops the log lines of later steps (any spacing, key order, a line cut short) and keeps unreadable ones"
else
    fail "log trim on resume" "steps: $steps; output: $(grep log.jsonl <<<"$out")"
fi

# ---- bad input: refused with a message that names the problem ---------------------------------------
printf 'n_layers = 2\nmodel_dimm = 64\n' >"$T/bad.conf"
expect_fail "bad config key names the key and line" "bad.conf:2: unknown key 'model_dimm'" $M train --config "$T/bad.conf"
expect_fail "malformed value names the key" "batch_size" $M train "${TINY[@]}" --batch_size 4x
expect_fail "missing shards" "nonexistent" $M train "${TINY[@]}" --out_dir "$T/e1" --train_data "$T/nonexistent"
mkdir -p "$T/trunc" && head -c 50000 data/corpus/val/*.bin >"$T/trunc/val_000.bin"
expect_fail "truncated shard" "trunc" $M train "${TINY[@]}" --out_dir "$T/e2" --train_data "$T/trunc"
printf 'this is not a shard at all, just text......................................................' >"$T/notshard.bin"
expect_fail "not a shard (bad magic)" "magic|not a token shard" $M train "${TINY[@]}" --out_dir "$T/e3" --train_data "$T/notshard.bin"
expect_fail "vocabulary mismatch between shards and config" "vocab" $M train "${TINY[@]}" --out_dir "$T/e4" --vocab_size 1000
$PY - data/corpus/val "$T/badtok" <<'EOF'
import sys, os, glob, struct
src = sorted(glob.glob(os.path.join(sys.argv[1], "*.bin")))[0]
b = bytearray(open(src, "rb").read())
os.makedirs(sys.argv[2], exist_ok=True)
struct.pack_into("<H", b, 64 + 2 * 1000, 40000)   # token 1000 := 40000 >= vocab 32000 (uint16 tokens)
open(os.path.join(sys.argv[2], "bad.bin"), "wb").write(b)
EOF
expect_fail "token id outside the vocabulary" "40000" $M train "${TINY[@]}" --out_dir "$T/e5" --train_data "$T/badtok"
expect_fail "sequence length the chunk size cannot split" "seq_len 40 does not fit chunk_size 16" $M train "${TINY[@]}" --out_dir "$T/e6" --seq_len 40
touch "$T/afile"
out=$($M train "${TINY[@]}" --out_dir "$T/afile/run" 2>&1); rc=$?
[ $rc -ne 0 ] && ! grep -q "^step" <<<"$out" && grep -q "afile" <<<"$out" && pass "unwritable out_dir fails before training" "$(head -n1 <<<"$out" | cut -c1-160)" || fail "unwritable out_dir" "$out"
expect_fail "out_dir with checkpoints needs --resume" "already holds checkpoints" $M train "${TINY[@]}" --out_dir "$T/a" --max_steps 41
expect_fail "resume from a missing checkpoint" "missing.h5" $M train "${TINY[@]}" --out_dir "$T/e7" --resume "$T/missing.h5"
head -c 4000 "$T/a/ckpt_00000040.h5" >"$T/trunc.h5"
expect_fail "resume from a truncated checkpoint" "trunc.h5" $M train "${TINY[@]}" --out_dir "$T/e8" --resume "$T/trunc.h5"
expect_fail "init_from a checkpoint of another model shape" "shape" $M train "${TINY[@]}" --out_dir "$T/e9" --model_dim 32 --z_dim 16 --value_dim 32 --init_from "$T/a/ckpt_00000040.h5"
expect_fail "eval without --ckpt" "needs --ckpt" $M eval --data data/corpus/val
expect_fail "attention_dropout outside [0, 1) is refused" "attention_dropout" $M train "${TINY[@]}" --out_dir "$T/e10" --attention_dropout 1.5
