#!/usr/bin/env bash
# Train both arms of a matched Megalodon / Llama-2 pair (configs/pairs/PAIR-megalodon.conf and
# PAIR-llama.conf) on the same data, order, seed, token budget and schedule, one after the other, then
# write a report directory: loss-versus-tokens curves of both arms (scripts/plot_runs.py --x tokens) and
# report.md (final training and validation loss, tokens/s, MFU, parameter counts, the commands that
# reproduce it). docs/experiments.md describes the pairs and the runs made with it.
#
#   scripts/experiment.sh PAIR [--steps N | --tokens N] [--out DIR] [--mpirun "mpirun -np 4"]
#                         [--build DIR] [--pairs DIR] [--dry-run] [--report-only] [-- --KEY VALUE ...]
#   (from the repository root: the pairs read data/corpus and data/tokenizer relative to it)
#
#   PAIR          a pair name: every configs/pairs/NAME-megalodon.conf with a NAME-llama.conf beside it
#   --steps N     optimizer steps of each arm (default: the pair's max_steps); sets max_steps, so the
#                 cosine schedule ends at step N in both arms
#   --tokens N    token budget of each arm: N / tokens-per-step steps, rounded up
#   --out DIR     output directory (default runs/experiments/PAIR): DIR/megalodon and DIR/llama are the
#                 two runs' out_dir, DIR/report the report (report.md, summary.json, the PNGs)
#   --mpirun CMD  a launcher prefix for both trainings, e.g. "mpirun -np 4" (data parallel; the pair's
#                 batch is global, so the losses are those of one process)
#   --build DIR   where build/megalodon lives (default $MG_BUILD or build)
#   --pairs DIR   where the pairs' configs live (default configs/pairs)
#   --dry-run     check the pair, print the parameter counts and the commands, run nothing
#   --report-only train nothing: redraw the plots and rewrite the report of the runs already in --out
#   -- ARGS       further `megalodon train` overrides given to both arms (e.g. -- --threads 2)
#
# The two configs may differ only in the keys that belong to one architecture (ARCH_KEYS below) and
# out_dir; anything else (data, seq_len, batch, optimizer, schedule, seed, eval) must be the same, and a
# pair that breaks this is refused. Exit status 0 when both arms trained and the report was written.
set -euo pipefail
# the whole script is one compound command, read before it runs: editing the file while an experiment
# runs does not change what that run does
{

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${MG_PYTHON:-/usr/bin/python3}
BUILD=${MG_BUILD:-build}
ARMS=(megalodon llama)
# keys that may differ between the two arms: what only one architecture reads, or what sizes its blocks
ARCH_KEYS="arch num_heads num_kv_heads z_dim value_dim ffn_hidden_dim cema_ndim norm_num_groups chunk_size swiglu out_dir"

say() { echo "[experiment] $*"; }
die() { echo "experiment.sh: error: $*" >&2; exit 2; }

# paths as the user will type them: relative to the repository when run from its root
rel() { case $1 in "$PWD"/*) echo "${1#"$PWD"/}" ;; *) echo "$1" ;; esac; }
PAIR_DIR=$(rel "$ROOT/configs/pairs")

known_pairs() {
    local f n
    for f in "$PAIR_DIR"/*-megalodon.conf; do
        [ -f "$f" ] || continue
        n=$(basename "$f" -megalodon.conf)
        [ -f "$PAIR_DIR/$n-llama.conf" ] && echo "$n"
    done
    return 0
}

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }

PAIR="" STEPS="" TOKENS="" OUT="" MPIRUN="" DRY=0 REPORT_ONLY=0 EXTRA=()
while [ $# -gt 0 ]; do
    case $1 in
        -h|--help) usage; exit 0 ;;
        --steps) [ $# -ge 2 ] || die "--steps needs a value"; STEPS=$2; shift 2 ;;
        --steps=*) STEPS=${1#*=}; shift ;;
        --tokens) [ $# -ge 2 ] || die "--tokens needs a value"; TOKENS=$2; shift 2 ;;
        --tokens=*) TOKENS=${1#*=}; shift ;;
        --out) [ $# -ge 2 ] || die "--out needs a value"; OUT=$2; shift 2 ;;
        --out=*) OUT=${1#*=}; shift ;;
        --mpirun) [ $# -ge 2 ] || die "--mpirun needs a value"; MPIRUN=$2; shift 2 ;;
        --mpirun=*) MPIRUN=${1#*=}; shift ;;
        --build) [ $# -ge 2 ] || die "--build needs a value"; BUILD=$2; shift 2 ;;
        --build=*) BUILD=${1#*=}; shift ;;
        --pairs) [ $# -ge 2 ] || die "--pairs needs a value"; PAIR_DIR=${2%/}; shift 2 ;;
        --pairs=*) PAIR_DIR=${1#*=}; PAIR_DIR=${PAIR_DIR%/}; shift ;;
        --dry-run) DRY=1; shift ;;
        --report-only) REPORT_ONLY=1; shift ;;
        --) shift; EXTRA=("$@"); break ;;
        -*) die "unknown option '$1' (scripts/experiment.sh --help)" ;;
        *) [ -z "$PAIR" ] || die "one pair at a time (got '$PAIR' and '$1')"; PAIR=$1; shift ;;
    esac
done
KNOWN=$(known_pairs | tr '\n' ' '); KNOWN=${KNOWN% }
[ -n "$PAIR" ] || die "no pair given; known pairs: ${KNOWN:-none} ($PAIR_DIR/)"
is_known=0
for n in $KNOWN; do [ "$n" = "$PAIR" ] && is_known=1; done
if [ "$is_known" = 0 ]; then
    die "unknown pair '$PAIR'; known pairs: ${KNOWN:-none} ($PAIR_DIR/NAME-megalodon.conf + NAME-llama.conf)"
fi
[ -z "$STEPS" ] || [ -z "$TOKENS" ] || die "give --steps or --tokens, not both"
[ -z "$STEPS" ] || [[ $STEPS =~ ^[1-9][0-9]*$ ]] || die "--steps must be a positive whole number, not '$STEPS'"
[ -z "$TOKENS" ] || [[ $TOKENS =~ ^[1-9][0-9]*$ ]] || die "--tokens must be a positive whole number, not '$TOKENS'"
OUT=${OUT:-runs/experiments/$PAIR}
M=$BUILD/megalodon
[ -x "$M" ] || die "$M not found (run make, or pass --build DIR)"
$PY -c 'import json' 2>/dev/null || die "$PY not found (MG_PYTHON=... names another Python 3)"

declare -A CONF
for a in "${ARMS[@]}"; do CONF[$a]=$PAIR_DIR/$PAIR-$a.conf; done

# ---- the two configs may differ only in architecture keys ------------------------------------------
# conf_value FILE KEY: the value as written (comments and quotes stripped), or empty
conf_keys() { sed -e 's/#.*//' "$1" | awk -F= 'NF >= 2 { k = $1; v = substr($0, index($0, "=") + 1);
    gsub(/^[ \t]+|[ \t]+$/, "", k); gsub(/^[ \t"]+|[ \t"]+$/, "", v); print k "=" v }' | sort; }
diffs=$( { diff <(conf_keys "${CONF[megalodon]}") <(conf_keys "${CONF[llama]}") || true; } | sed -n 's/^[<>] //p' |
    cut -d= -f1 | sort -u)
bad=""
for k in $diffs; do grep -qw -- "$k" <<<"$ARCH_KEYS" || bad+=" $k"; done
[ -z "$bad" ] || die "pair '$PAIR': ${CONF[megalodon]} and ${CONF[llama]} differ in non-architecture keys:$bad (only $ARCH_KEYS may differ)"
grep -qE '^arch=llama$' <(conf_keys "${CONF[llama]}") || die "${CONF[llama]} does not set arch = llama"
if grep -qE '^arch=' <(conf_keys "${CONF[megalodon]}") && ! grep -qE '^arch=megalodon$' <(conf_keys "${CONF[megalodon]}"); then
    die "${CONF[megalodon]} is not arch = megalodon"
fi

# ---- parameter counts, tokens per step, steps ----------------------------------------------------------
declare -A INFO PARAMS
for a in "${ARMS[@]}"; do
    INFO[$a]=$($M info --config "${CONF[$a]}" "${EXTRA[@]}" 2>&1) || die "megalodon info --config ${CONF[$a]} failed:
${INFO[$a]}"
    PARAMS[$a]=$(sed -n 's/^parameters: \([0-9,]*\).*/\1/p' <<<"${INFO[$a]}" | tr -d ,)
    [ -n "${PARAMS[$a]}" ] || die "no parameter count in megalodon info --config ${CONF[$a]}"
done
TPS=$(sed -n 's/^tokens per step: \([0-9,]*\).*/\1/p' <<<"${INFO[megalodon]}" | tr -d ,)
TPS_L=$(sed -n 's/^tokens per step: \([0-9,]*\).*/\1/p' <<<"${INFO[llama]}" | tr -d ,)
[ -n "$TPS" ] && [ "$TPS" = "$TPS_L" ] || die "tokens per step differ between the arms ($TPS vs $TPS_L)"
conf_int() { sed -n "s/^$2=\\([0-9]*\\)\$/\\1/p" <(conf_keys "$1") | head -n1; }
if [ -n "$TOKENS" ]; then
    STEPS=$(( (TOKENS + TPS - 1) / TPS ))
elif [ -z "$STEPS" ]; then
    STEPS=$(conf_int "${CONF[megalodon]}" max_steps)
fi
WARM=$(conf_int "${CONF[megalodon]}" warmup_steps); WARM=${WARM:-0}
OVR=(--max_steps "$STEPS")
if [ "$WARM" -gt "$STEPS" ]; then
    say "note: warmup_steps $WARM > $STEPS steps: both arms warm up over $STEPS steps"
    OVR+=(--warmup_steps "$STEPS")
fi
ratio=$($PY -c "import sys; a, b = map(int, sys.argv[1:]); print(f'{abs(a - b) / min(a, b) * 100:.2f}')" \
    "${PARAMS[megalodon]}" "${PARAMS[llama]}")
say "pair $PAIR: megalodon ${PARAMS[megalodon]} parameters, llama ${PARAMS[llama]} ($ratio % apart)"
say "each arm: $STEPS steps x $TPS tokens = $((STEPS * TPS)) tokens; out $OUT"

# ---- the commands ------------------------------------------------------------------------------------
q() { local s="" x; for x in "$@"; do s+="${s:+ }$(printf '%q' "$x")"; done; echo "$s"; }
declare -A CMD
for a in "${ARMS[@]}"; do
    CMD[$a]="${MPIRUN:+$MPIRUN }$(q "$M" train --config "${CONF[$a]}" "${OVR[@]}" --out_dir "$OUT/$a" "${EXTRA[@]}")"
done
PLOT_CMD=$(q "$PY" "$(rel "$ROOT/scripts/plot_runs.py")" "$OUT/megalodon" "$OUT/llama" --x tokens --out "$OUT/report")
[ "$STEPS" -ge 50 ] && PLOT_CMD+=" --smooth 10"
# the script line that reproduces all of it
SELF=$(q "$(rel "$ROOT/scripts/experiment.sh")" "$PAIR" --steps "$STEPS" --out "$OUT")
[ -n "$MPIRUN" ] && SELF+=" --mpirun $(printf '%q' "$MPIRUN")"
[ "$BUILD" != build ] && SELF+=" --build $(printf '%q' "$BUILD")"
[ "$PAIR_DIR" != configs/pairs ] && SELF+=" --pairs $(printf '%q' "$PAIR_DIR")"
[ ${#EXTRA[@]} -gt 0 ] && SELF+=" -- $(q "${EXTRA[@]}")"

if [ "$DRY" = 1 ]; then
    say "dry run: would run"
    for a in "${ARMS[@]}"; do echo "  ${CMD[$a]}"; done
    echo "  $PLOT_CMD"
    exit 0
fi

if [ "$REPORT_ONLY" = 0 ]; then
    for a in "${ARMS[@]}"; do
        [ ! -e "$OUT/$a/log.jsonl" ] || die "$OUT/$a already holds a run (log.jsonl): choose another --out, remove it, or pass --report-only"
    done
else
    for a in "${ARMS[@]}"; do [ -f "$OUT/$a/log.jsonl" ] || die "--report-only: no $OUT/$a/log.jsonl"; done
fi
mkdir -p "$OUT/report"

# ---- train both arms, one after the other -------------------------------------------------------------
i=0
for a in "${ARMS[@]}"; do
    [ "$REPORT_ONLY" = 1 ] && break
    i=$((i + 1))
    say "arm $i/2: $a ($(date '+%H:%M:%S')): ${CMD[$a]}"
    t0=$(date +%s)
    # the trainer's lines go to the terminal prefixed with the arm, and whole to DIR/ARM-train.txt
    if ! eval "${CMD[$a]}" 2>&1 | tee "$OUT/$a-train.txt" | sed -u "s/^/[$a] /"; then
        die "arm $a failed (its output: $OUT/$a-train.txt)"
    fi
    say "arm $i/2: $a done in $(( $(date +%s) - t0 )) s"
done

# ---- plots and report ------------------------------------------------------------------------------------
say "plotting: $PLOT_CMD"
eval "$PLOT_CMD" | sed 's/^/[plot] /' || die "plotting failed"

say "writing $OUT/report/report.md"
export EXP_PAIR=$PAIR EXP_OUT=$OUT EXP_STEPS=$STEPS EXP_TPS=$TPS EXP_SELF=$SELF EXP_PLOT=$PLOT_CMD \
    EXP_CMD_MEGALODON=${CMD[megalodon]} EXP_CMD_LLAMA=${CMD[llama]} \
    EXP_CONF_MEGALODON=${CONF[megalodon]} EXP_CONF_LLAMA=${CONF[llama]} \
    EXP_INFO_MEGALODON=${INFO[megalodon]} EXP_INFO_LLAMA=${INFO[llama]} \
    EXP_COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown) \
    EXP_DIRTY=$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | head -c1)
$PY - <<'EOF'
import json, os, platform, re, statistics, time
E = os.environ
arms = ["megalodon", "llama"]
out = E["EXP_OUT"]
LAST = 10  # final training loss: mean over this many last logged steps

def info_num(text, pattern):
    m = re.search(pattern, text, re.M)
    return int(m.group(1).replace(",", "")) if m else None

def read_log(path):
    recs = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if isinstance(r, dict) and isinstance(r.get("step"), int):
                recs[r["step"]] = r  # a step logged twice counts its last line
    return [recs[s] for s in sorted(recs)]

def first_line(path, prefix):
    try:
        for line in open(path):
            if line.startswith(prefix):
                return line.strip()
    except OSError:
        pass
    return ""

rows = {}
for a in arms:
    info = E["EXP_INFO_" + a.upper()]
    recs = read_log(os.path.join(out, a, "log.jsonl"))
    losses = [r["loss"] for r in recs if isinstance(r.get("loss"), (int, float))]
    vals = [r for r in recs if isinstance(r.get("val_loss"), (int, float))]
    # throughput of the steps after the first (the first pays for start-up)
    timed = recs[1:] if len(recs) > 1 else recs
    tps = [r["tokens_per_s"] for r in timed if isinstance(r.get("tokens_per_s"), (int, float))]
    mfu = [r["mfu"] for r in timed if isinstance(r.get("mfu"), (int, float))]
    params = info_num(info, r"^parameters: ([0-9,]+)")
    emb = info_num(info, r"^\s*embedding \(V x d\)\s+([0-9,]+)") or 0
    head = info_num(info, r"^\s*LM head \(V x d\)\s+([0-9,]+)") or 0
    rows[a] = {
        "config": E["EXP_CONF_" + a.upper()],
        "params": params, "non_embedding_params": params - emb - head if params else None,
        "flops_per_token": info_num(info, r"^FLOPs per token \(training\): [0-9.]+ MFLOP = 6 x ([0-9,]+)"),
        "steps": recs[-1]["step"] if recs else 0, "tokens": recs[-1].get("tokens") if recs else 0,
        "final_train_loss": statistics.fmean(losses[-LAST:]) if losses else None,
        "final_train_loss_n": min(LAST, len(losses)),
        "final_val_loss": vals[-1]["val_loss"] if vals else None,
        "final_val_step": vals[-1]["step"] if vals else None,
        "val_curve": [[r.get("tokens"), r["val_loss"]] for r in vals],
        "tokens_per_s": statistics.fmean(tps) if tps else None,
        "mfu": statistics.fmean(mfu) if mfu else None,
        "wall_s": recs[-1].get("elapsed") if recs else None,
        "data": first_line(os.path.join(out, a + "-train.txt"), "data:"),
        "mfu_line": first_line(os.path.join(out, a + "-train.txt"), "MFU:"),
        "tokens_by_step": {r["step"]: r.get("tokens") for r in recs},
    }
tm, tl = rows["megalodon"]["tokens_by_step"], rows["llama"]["tokens_by_step"]
same_tokens = bool(tm) and tm == tl
common = sorted(set(tm) & set(tl))

def fmt(x, spec):
    return "n/a" if x is None else format(x, spec)

md = []
md.append(f"# Megalodon vs Llama-2: pair `{E['EXP_PAIR']}`\n")
dirty = " (with uncommitted changes)" if E.get("EXP_DIRTY") else ""
md.append(f"Written {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by scripts/experiment.sh from commit "
          f"`{E['EXP_COMMIT']}`{dirty} on {platform.node() or 'this machine'} "
          f"({os.cpu_count()} CPUs visible). Each arm: {E['EXP_STEPS']} steps x {E['EXP_TPS']} tokens = "
          f"{int(E['EXP_STEPS']) * int(E['EXP_TPS']):,} tokens, the same data, order, seed and schedule.\n")
nlast = min(rows[a]["final_train_loss_n"] for a in arms)
md.append("| arm | config | parameters | non-embedding | steps | tokens | final train loss "
          f"(mean of last {nlast} logged steps) | final val loss | tokens/s | MFU | wall s |")
md.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for a in arms:
    r = rows[a]
    md.append(f"| {a} | `{r['config']}` | {fmt(r['params'], ',')} | {fmt(r['non_embedding_params'], ',')} | "
              f"{r['steps']} | {fmt(r['tokens'], ',')} | {fmt(r['final_train_loss'], '.4f')} | "
              f"{fmt(r['final_val_loss'], '.4f')} | {fmt(r['tokens_per_s'], '.0f')} | "
              f"{fmt(None if r['mfu'] is None else 100 * r['mfu'], '.1f')} % | {fmt(r['wall_s'], '.0f')} |")
md.append("")
m, l = rows["megalodon"], rows["llama"]
if m["final_train_loss"] is not None and l["final_train_loss"] is not None:
    d = m["final_train_loss"] - l["final_train_loss"]
    md.append(f"Training loss, megalodon − llama: {d:+.4f} ({'megalodon' if d < 0 else 'llama'} lower).")
if m["final_val_loss"] is not None and l["final_val_loss"] is not None:
    d = m["final_val_loss"] - l["final_val_loss"]
    md.append(f"Validation loss, megalodon − llama: {d:+.4f} ({'megalodon' if d < 0 else 'llama'} lower).")
md.append(f"Both arms logged the same `tokens` at the same steps: {'yes' if same_tokens else 'NO'} "
          f"({len(common)} steps in common).")
md.append("")
md.append("tokens/s and MFU are means over the logged steps after the first; MFU is against the peak each run "
          "printed at start-up (on the CPU, a GEMM measured by that run), FLOPs per token by the project's "
          "convention (docs/training.md). Wall time is the last step's `elapsed` (evaluations included).\n")
md.append("## Curves (over tokens trained on)\n")
for name, title in [("train_loss", "training loss"), ("val_loss", "validation loss"), ("overview", "overview")]:
    if os.path.exists(os.path.join(out, "report", name + ".png")):
        md.append(f"![{title}]({name}.png)\n")
md.append("## Validation loss by tokens\n")
md.append("| tokens | megalodon | llama |")
md.append("|---:|---:|---:|")
vm = {t: v for t, v in m["val_curve"]}
vl = {t: v for t, v in l["val_curve"]}
for t in sorted(set(vm) | set(vl), key=lambda x: (x is None, x)):
    md.append(f"| {fmt(t, ',')} | {fmt(vm.get(t), '.4f')} | {fmt(vl.get(t), '.4f')} |")
md.append("")
md.append("## Runs\n")
for a in arms:
    r = rows[a]
    md.append(f"* {a}: `{r['data']}`; `{r['mfu_line']}`")
md.append("")
md.append("## Reproduce\n")
md.append("```sh")
md.append(E["EXP_SELF"])
md.append("```\n")
md.append("which runs, from the repository root:\n")
md.append("```sh")
md.append(E["EXP_CMD_MEGALODON"])
md.append(E["EXP_CMD_LLAMA"])
md.append(E["EXP_PLOT"])
md.append("```")
with open(os.path.join(out, "report", "report.md"), "w") as f:
    f.write("\n".join(md) + "\n")
summary = {"pair": E["EXP_PAIR"], "steps": int(E["EXP_STEPS"]), "tokens_per_step": int(E["EXP_TPS"]),
           "same_tokens": same_tokens, "commit": E["EXP_COMMIT"],
           "arms": {a: {k: v for k, v in rows[a].items() if k != "tokens_by_step"} for a in arms}}
with open(os.path.join(out, "report", "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
for a in arms:
    r = rows[a]
    print(f"[experiment] {a:9s} params {fmt(r['params'], ',')}  train loss {fmt(r['final_train_loss'], '.4f')}  "
          f"val loss {fmt(r['final_val_loss'], '.4f')}  {fmt(r['tokens_per_s'], '.0f')} tok/s")
print(f"[experiment] same tokens at every logged step: {'yes' if same_tokens else 'NO'}")
EOF
say "done: $OUT/report/report.md"
exit 0
}
