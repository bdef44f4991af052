#!/usr/bin/env bash
# scripts/experiment.sh (docs/experiments.md): the tiny Megalodon / Llama pair for 3 steps writes a
# report directory with report.md (one table row per arm with the parameter counts of `megalodon info`,
# final losses, tokens/s, MFU, the reproducing commands), summary.json and whole PNGs of the loss
# curves over tokens; both arms saw the same tokens at the same steps; every configs/pairs/ pair is
# within 5 % in parameters and differs only in architecture keys; an unknown pair, a pair that differs
# in a non-architecture key and an out directory that already holds a run are refused; --tokens and
# --dry-run compute the steps and run nothing.
set -u
BUILD=${MG_BUILD:-build}
M=$BUILD/megalodon
PY=/usr/bin/python3
EXP=scripts/experiment.sh
T=$(mktemp -d /tmp/mg_experiment_test.XXXXXX)
trap 'rm -rf "$T"' EXIT
export OMP_NUM_THREADS=2

pass() { echo "PASS $1${2:+ ($2)}"; }
fail() { echo "FAIL $1: $2"; }

if ! $PY -c 'import matplotlib' 2>/dev/null; then
    echo "SKIP experiment ($PY cannot import matplotlib; install python3-matplotlib: make deps)"
    exit 0
fi
if [ ! -d data/corpus/train ] || [ ! -d data/corpus/val ]; then
    echo "# preparing the default corpus (scripts/prepare_data.sh)"
    scripts/prepare_data.sh >"$T/prepare.log" 2>&1 || { fail "prepare default corpus" "$(tail -n 5 "$T/prepare.log")"; exit 1; }
fi

# ---- every pair: within 5 % in parameters, only architecture keys differ (checked by --dry-run) ----------
pairs=$(ls configs/pairs/*-megalodon.conf 2>/dev/null | sed 's|.*/||; s|-megalodon.conf$||')
[ -n "$pairs" ] && pass "configs/pairs holds pairs" "$(echo $pairs)" || fail "configs/pairs holds pairs" "none found"
for p in $pairs; do
    out=$($EXP "$p" --dry-run --build "$BUILD" 2>&1)
    rc=$?
    # "[experiment] pair P: megalodon N parameters, llama N (x % apart)", from megalodon info
    pm=$(sed -n "s/^\[experiment\] pair $p: megalodon \([0-9]*\) parameters, llama \([0-9]*\) .*/\1/p" <<<"$out")
    pl=$(sed -n "s/^\[experiment\] pair $p: megalodon \([0-9]*\) parameters, llama \([0-9]*\) .*/\2/p" <<<"$out")
    if [ $rc -eq 0 ] && [ -n "$pm" ] && [ -n "$pl" ] &&
        $PY -c "import sys; a, b = int(sys.argv[1]), int(sys.argv[2]); sys.exit(abs(a - b) > 0.05 * min(a, b))" "$pm" "$pl"; then
        # the header comments state the counts of megalodon info
        pmc=$($PY -c 'import sys; print(f"{int(sys.argv[1]):,}")' "$pm")
        plc=$($PY -c 'import sys; print(f"{int(sys.argv[1]):,}")' "$pl")
        if grep -q "$pmc" "configs/pairs/$p-megalodon.conf" && grep -q "$plc" "configs/pairs/$p-llama.conf"; then
            pass "pair $p: parameters within 5 %, only architecture keys differ, counts in the headers" "$pm vs $pl"
        else
            fail "pair $p: parameter counts in the header comments" "megalodon $pmc, llama $plc not found in the files"
        fi
    else
        fail "pair $p: parameters within 5 %, only architecture keys differ" "exit $rc, $pm vs $pl: $(tail -n 2 <<<"$out")"
    fi
done

# ---- refusals ------------------------------------------------------------------------------------------
out=$($EXP no-such-pair --build "$BUILD" 2>&1)
rc=$?
[ $rc -ne 0 ] && grep -q "unknown pair 'no-such-pair'; known pairs: .*tiny" <<<"$out" &&
    pass "an unknown pair is refused with the known ones listed" "$out" || fail "an unknown pair is refused" "exit $rc: $out"

mkdir "$T/pairs"
cp configs/pairs/tiny-megalodon.conf "$T/pairs/bad-megalodon.conf"
sed 's/^lr .*/lr = 1e-3/' configs/pairs/tiny-llama.conf >"$T/pairs/bad-llama.conf"
out=$($EXP bad --pairs "$T/pairs" --out "$T/bad" --build "$BUILD" 2>&1)
rc=$?
[ $rc -ne 0 ] && grep -q "differ in non-architecture keys: lr" <<<"$out" && [ ! -e "$T/bad" ] &&
    pass "a pair that differs in a non-architecture key is refused" "$(cut -c1-160 <<<"$out")" ||
    fail "a pair that differs in a non-architecture key is refused" "exit $rc: $out"

out=$($EXP tiny --tokens 300 --dry-run --out "$T/dry" --build "$BUILD" 2>&1)
rc=$?
[ $rc -eq 0 ] && [ "$(grep -c -- "train --config configs/pairs/tiny-[a-z]*.conf --max_steps 3 " <<<"$out")" = 2 ] &&
    [ ! -e "$T/dry" ] && pass "--tokens 300 --dry-run: 3 steps of 128 tokens, both commands printed, nothing run" ||
    fail "--tokens 300 --dry-run" "exit $rc: $out"

# ---- the tiny pair for 3 steps -------------------------------------------------------------------------
R=$T/run
out=$($EXP tiny --steps 3 --out "$R" --build "$BUILD" -- --threads 2 --eval_every 2 2>&1)
rc=$?
echo "$out" >"$T/run.log"
if [ $rc -eq 0 ] && [ -f "$R/report/report.md" ]; then
    pass "tiny pair, 3 steps: exit 0, report written" "$(grep -c '^\[megalodon\] step\|^\[llama\] step' <<<"$out") step lines shown"
else
    fail "tiny pair, 3 steps" "exit $rc: $(tail -n 8 <<<"$out")"
    exit 1
fi
grep -q '^\[experiment\] arm 1/2: megalodon' <<<"$out" && grep -q '^\[experiment\] arm 2/2: llama' <<<"$out" &&
    pass "progress is printed" || fail "progress is printed" "$(head -n 5 <<<"$out")"

# the table: one row per arm, with the parameter counts of megalodon info and numbers in every column
out=$($PY - "$R/report/report.md" "$R/report/summary.json" \
    "$($M info --config configs/pairs/tiny-megalodon.conf | sed -n 's/^parameters: \([0-9,]*\).*/\1/p')" \
    "$($M info --config configs/pairs/tiny-llama.conf | sed -n 's/^parameters: \([0-9,]*\).*/\1/p')" <<'EOF'
import json, re, sys
md, summary, pm, pl = open(sys.argv[1]).read(), json.load(open(sys.argv[2])), sys.argv[3], sys.argv[4]
def row(arm):
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == arm:
            return cells
    return None
bad = []
for arm, params in (("megalodon", pm), ("llama", pl)):
    r = row(arm)
    if r is None:
        bad.append(f"no table row for {arm}"); continue
    if len(r) != 11:
        bad.append(f"{arm} row has {len(r)} cells, not 11: {r}"); continue
    if r[2] != params:
        bad.append(f"{arm} parameters {r[2]} != megalodon info's {params}")
    if r[4] != "3" or r[5] != "384":
        bad.append(f"{arm} steps/tokens {r[4]}/{r[5]}, expected 3/384")
    for i, name in ((6, "train loss"), (7, "val loss"), (8, "tokens/s")):
        if not re.fullmatch(r"[0-9]+(\.[0-9]+)?", r[i]):
            bad.append(f"{arm} {name} '{r[i]}' is not a number")
    if not re.fullmatch(r"[0-9.]+ %", r[9]):
        bad.append(f"{arm} MFU '{r[9]}'")
    s = summary["arms"][arm]
    if abs(s["final_train_loss"] - float(r[6])) > 1e-4 or abs(s["final_val_loss"] - float(r[7])) > 1e-4:
        bad.append(f"{arm}: summary.json and the table disagree")
for needed in ("## Reproduce", "scripts/experiment.sh tiny --steps 3", "train --config configs/pairs/tiny-megalodon.conf",
               "train --config configs/pairs/tiny-llama.conf", "plot_runs.py", "--x tokens", "![training loss](train_loss.png)",
               "![validation loss](val_loss.png)", "same `tokens` at the same steps: yes"):
    if needed not in md:
        bad.append(f"report.md lacks '{needed}'")
print("BAD " + "; ".join(bad) if bad else "rows: " + "; ".join(" | ".join(row(a)[i] for i in (0, 2, 6, 7)) for a in ("megalodon", "llama")))
EOF
)
[[ $out != BAD* ]] && [ -n "$out" ] &&
    pass "report.md: a row per arm with info's parameter counts, losses, tokens/s, MFU; reproduce commands" "$out" ||
    fail "report.md table" "${out#BAD }"

# the plots: whole PNGs (signature, IHDR with a size, IEND)
out=$($PY - "$R/report"/{train_loss,val_loss,overview}.png <<'EOF'
import os, struct, sys
bad, ok = [], []
for p in sys.argv[1:]:
    b = open(p, "rb").read() if os.path.isfile(p) else b""
    w, h = struct.unpack(">II", b[16:24]) if len(b) >= 24 else (0, 0)
    if b[:8] != b"\x89PNG\r\n\x1a\n" or b[12:16] != b"IHDR" or w == 0 or h == 0 or b[-8:-4] != b"IEND":
        bad.append(f"{p} is not a whole PNG")
    else:
        ok.append(f"{os.path.basename(p)} {w}x{h}")
print("BAD " + "; ".join(bad) if bad else ", ".join(ok))
EOF
)
[[ $out != BAD* ]] && pass "train_loss, val_loss and overview PNGs are whole" "$out" || fail "PNGs" "${out#BAD }"

# both arms saw the same tokens: the same `tokens` at the same steps, read from the two logs here
out=$($PY - "$R/megalodon/log.jsonl" "$R/llama/log.jsonl" <<'EOF'
import json, sys
logs = [{r["step"]: r["tokens"] for r in map(json.loads, open(p))} for p in sys.argv[1:]]
print("ok " + str(sorted(logs[0].items())) if logs[0] == logs[1] and len(logs[0]) == 3 else f"BAD {logs}")
EOF
)
[[ $out == ok* ]] && pass "both arms logged the same tokens at the same steps" "${out#ok }" || fail "same tokens" "$out"
# ... and the same data and schedule
dm=$(grep -m1 '^data:' "$R/megalodon-train.txt"); dl=$(grep -m1 '^data:' "$R/llama-train.txt")
sm=$(grep -m1 '^schedule:' "$R/megalodon-train.txt"); sl=$(grep -m1 '^schedule:' "$R/llama-train.txt")
[ -n "$dm" ] && [ "$dm" = "$dl" ] && [ -n "$sm" ] && [ "$sm" = "$sl" ] &&
    pass "both arms: the same data and schedule lines" "$dm; $sm" || fail "same data and schedule" "'$dm' / '$dl'; '$sm' / '$sl'"

# a second run into the same directory is refused; --report-only rewrites the report
out=$($EXP tiny --steps 3 --out "$R" --build "$BUILD" -- --threads 2 2>&1)
rc=$?
[ $rc -ne 0 ] && grep -q "already holds a run" <<<"$out" && pass "an out directory that holds a run is refused" ||
    fail "an out directory that holds a run is refused" "exit $rc: $(tail -n 2 <<<"$out")"
rm "$R/report/report.md"
out=$($EXP tiny --steps 3 --out "$R" --build "$BUILD" --report-only 2>&1)
rc=$?
[ $rc -eq 0 ] && [ -f "$R/report/report.md" ] && ! grep -q '^\[megalodon\] step' <<<"$out" &&
    pass "--report-only rewrites the report without training" || fail "--report-only" "exit $rc: $(tail -n 3 <<<"$out")"
