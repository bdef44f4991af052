#!/usr/bin/env bash
# scripts/plot_runs.py and `megalodon plot` (docs/training.md, "Plotting runs"): synthetic logs of two
# runs and the log of a real 4-step tiny run become valid PNGs, one per quantity and an overview, in the
# default output directories; a quantity no run logged is skipped with a note; a truncated last line
# is skipped with a warning; a malformed line or a missing log fails with the file and line named.
set -u
BUILD=${MG_BUILD:-build}
M=$BUILD/megalodon
PY=/usr/bin/python3
REPO=$(pwd)
PLOT=$REPO/scripts/plot_runs.py
T=$(mktemp -d /tmp/mg_plot_test.XXXXXX)
trap 'rm -rf "$T"' EXIT
export OMP_NUM_THREADS=2

pass() { echo "PASS $1${2:+ ($2)}"; }
fail() { echo "FAIL $1: $2"; }
ALL="train_loss val_loss lr grad_norm tokens_per_s overview"

# check_pngs NAME DIR "png names": each DIR/<name>.png is a whole PNG: the 8-byte signature, an IHDR
# chunk with a nonzero width and height first, an IEND chunk last.
check_pngs() {
    local name=$1 dir=$2 names=$3 files=() n
    for n in $names; do files+=("$dir/$n.png"); done
    local out
    out=$($PY - "${files[@]}" <<'EOF'
import os, struct, sys
bad, sizes = [], []
for path in sys.argv[1:]:
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        bad.append(f"{path} missing or empty"); continue
    b = open(path, "rb").read()
    w, h = struct.unpack(">II", b[16:24]) if len(b) >= 24 else (0, 0)
    if b[:8] != b"\x89PNG\r\n\x1a\n" or b[12:16] != b"IHDR" or w == 0 or h == 0 or b[-8:-4] != b"IEND":
        bad.append(f"{path} is not a whole PNG (starts {b[:16]!r})"); continue
    sizes.append(f"{os.path.basename(path)} {w}x{h} {len(b)} B")
print("BAD " + "; ".join(bad) if bad else ", ".join(sizes))
EOF
)
    if [ -n "$out" ] && [[ $out != BAD* ]]; then pass "$name" "$out"; else fail "$name" "${out#BAD }"; fi
}

# wrote_all NAME OUTPUT DIR "png names": the script printed "wrote DIR/<name>.png" for each
wrote_all() {
    local name=$1 out=$2 dir=$3 n missing=""
    for n in $4; do grep -qxF "wrote $dir/$n.png" <<<"$out" || missing+=" $n.png"; done
    if [ -z "$missing" ]; then pass "$name"; else fail "$name" "no 'wrote $dir/...' line for$missing; output: $out"; fi
}

if ! $PY -c 'import matplotlib' 2>/dev/null; then
    echo "SKIP plot ($PY cannot import matplotlib; install python3-matplotlib: make deps)"
    exit 0
fi

# ---- synthetic logs ----------------------------------------------------------------------------------
# run-a: 50 steps, validation every 10, a grad_norm that overflowed (null); run-b: steps 21..30 logged
# twice (a resume that could not trim the log), no validation; noval: no validation and a last line cut
# short by a kill.
$PY - "$T" <<'EOF'
import json, math, os, sys
def rec(s, val=False, lr=3e-3):
    r = {"step": s, "loss": 10.4 * math.exp(-s / 40) + 0.1 * math.sin(s), "lr": lr * min(1, s / 5),
         "grad_norm": 2.0 / math.sqrt(s) if s != 7 else None, "tokens_per_s": 2000 + 50 * (s % 3),
         "mfu": 0.3, "elapsed": 0.1 * s, "tokens": 128 * s}
    if val:
        r["val_loss"] = r["loss"] + 0.2
        r["val_ppl"] = math.exp(r["val_loss"])
    return json.dumps(r)
def write(name, lines, tail=""):
    os.makedirs(os.path.join(sys.argv[1], name))
    with open(os.path.join(sys.argv[1], name, "log.jsonl"), "w") as f:
        f.write("".join(l + "\n" for l in lines) + tail)
write("run-a", [rec(s, val=s % 10 == 0) for s in range(1, 51)])
write("run-b", [rec(s, lr=1e-3) for s in range(1, 31)] + [rec(s, lr=1e-3) for s in range(21, 41)])
write("noval", [rec(s) for s in range(1, 21)], tail=rec(21)[:40])
EOF

# two runs, default output directory ./plots
out=$(cd "$T" && $PY "$PLOT" run-a run-b --smooth 5 2>&1)
rc=$?
[ $rc -eq 0 ] && pass "two synthetic runs plotted (exit 0)" || fail "two synthetic runs plotted" "exit $rc: $out"
check_pngs "two runs: one valid PNG per quantity and an overview in ./plots" "$T/plots" "$ALL"
wrote_all "two runs: every file written is printed" "$out" plots "$ALL"
grep -q "run-b/log.jsonl: 10 steps logged more than once; the last line of each counts" <<<"$out" &&
    pass "steps logged twice are noted" || fail "steps logged twice are noted" "$out"

# a quantity no run logged; a truncated last line; default output directory RUN_DIR/plots
out=$($PY "$PLOT" "$T/noval" 2>&1)
rc=$?
if [ $rc -eq 0 ] && grep -q "note: no run logged val_loss (validation loss): val_loss.png not written" <<<"$out" &&
    [ ! -e "$T/noval/plots/val_loss.png" ]; then
    pass "a quantity no run logged is skipped with a note" "$(grep -m1 'no run logged' <<<"$out")"
else
    fail "a quantity no run logged is skipped with a note" "exit $rc: $out"
fi
check_pngs "one run: the logged quantities' PNGs in RUN_DIR/plots" "$T/noval/plots" "train_loss lr grad_norm tokens_per_s overview"
grep -q "warning: $T/noval/log.jsonl:21: skipping the last line, cut short" <<<"$out" &&
    pass "a truncated last line is skipped with a warning naming file and line" ||
    fail "a truncated last line is skipped with a warning" "$out"

# a malformed line in the middle: error naming file and line, non-zero exit, nothing written
mkdir "$T/bad"
{ head -n 6 "$T/run-a/log.jsonl"; echo '{"step": 7, "loss": 9.1, "lr": oops}'; tail -n +8 "$T/run-a/log.jsonl"; } >"$T/bad/log.jsonl"
out=$($PY "$PLOT" "$T/bad" --out "$T/bad/plots" 2>&1)
rc=$?
if [ $rc -ne 0 ] && grep -q "^error: $T/bad/log.jsonl:7: not valid JSON" <<<"$out" && ! grep -q Traceback <<<"$out" &&
    [ ! -e "$T/bad/plots" ]; then
    pass "a malformed line fails with file and line number" "exit $rc; $(head -n1 <<<"$out")"
else
    fail "a malformed line fails with file and line number" "exit $rc: $out"
fi
printf '{"loss": 9.0}\n' >"$T/bad/log.jsonl"
out=$($PY "$PLOT" "$T/bad" 2>&1)
rc=$?
[ $rc -ne 0 ] && grep -q "^error: $T/bad/log.jsonl:1: no integer \"step\" field" <<<"$out" &&
    pass "a line without a step fails with file and line number" || fail "a line without a step" "exit $rc: $out"
out=$($PY "$PLOT" "$T/run-a" "$T/missing" 2>&1)
rc=$?
[ $rc -ne 0 ] && grep -q "^error: cannot read $T/missing" <<<"$out" &&
    pass "a missing log fails naming it" "$(head -n1 <<<"$out")" || fail "a missing log fails naming it" "exit $rc: $out"

# ---- a real run, plotted through `megalodon plot`, over tokens -------------------------------------------
if [ ! -d data/corpus/train ] || [ ! -d data/corpus/val ]; then
    echo "# preparing the default corpus (scripts/prepare_data.sh)"
    scripts/prepare_data.sh >"$T/prepare.log" 2>&1 || { fail "prepare default corpus" "$(tail -n 5 "$T/prepare.log")"; exit 1; }
fi
out=$($M train --config configs/tiny.conf --threads 2 --max_steps 4 --warmup_steps 2 --eval_every 2 --eval_batches 1 \
    --out_dir "$T/tiny" 2>&1)
rc=$?
if [ $rc -eq 0 ] && [ "$(wc -l <"$T/tiny/log.jsonl")" = 4 ]; then
    pass "tiny run of 4 steps logged" "$(grep -c val_loss "$T/tiny/log.jsonl") validation steps"
else
    fail "tiny run of 4 steps logged" "exit $rc: $(tail -n 3 <<<"$out")"
fi
out=$($M plot "$T/tiny" --x tokens 2>&1)
rc=$?
[ $rc -eq 0 ] && pass "megalodon plot RUN_DIR --x tokens (exit 0)" || fail "megalodon plot RUN_DIR --x tokens" "exit $rc: $out"
check_pngs "real run: one valid PNG per quantity and an overview in RUN_DIR/plots" "$T/tiny/plots" "$ALL"
wrote_all "real run: every file written is printed" "$out" "$T/tiny/plots" "$ALL"
