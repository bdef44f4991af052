#!/usr/bin/env bash
# `megalodon prepare` and `megalodon tokenize` through the command line: shards of a small text set are
# complete and exact (every document, in order, tokenized as `tokenize` does, BOS first), deterministic,
# split into train/val by whole documents and into shards of at most --shard_tokens; bad inputs and options
# fail with a message that names the problem.
set -u
cd "$(dirname "$0")/.."
BIN=${MG_BUILD:-build}/megalodon
TOK=data/tokenizer/llama2.tok
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
pass=0; fail=0
check() { # check NAME CONDITION-EXIT-STATUS DETAIL
    if [ "$2" = 0 ]; then echo "PASS $1${3:+ ($3)}"; pass=$((pass + 1)); else echo "FAIL $1: ${3:-}"; fail=$((fail + 1)); fi
}
# expect_fail NAME NEEDLE CMD...: the command must fail and its stderr must contain NEEDLE
expect_fail() {
    local name=$1 needle=$2; shift 2
    local out rc
    out=$("$@" 2>&1 >/dev/null); rc=$?
    if [ $rc != 0 ] && grep -qF -- "$needle" <<<"$out"; then check "$name" 0 "rc $rc: $out"
    else check "$name" 1 "rc $rc, expected a failure mentioning '$needle'; got: $out"; fi
}

[ -x "$BIN" ] || { echo "FAIL test_prepare: $BIN not built (make)"; exit 1; }
# Python reads the shards as docs/data.md defines them: without it the checks would compare nothing.
if ! "$PY" -c 'import glob, struct' 2>/dev/null; then
    echo "SKIP test_prepare (no python3 to read the shards with; install python3: make deps)"; exit 0
fi
if [ ! -f "$TOK" ]; then
    echo "# $TOK missing; running scripts/fetch_data.sh --tokenizer-only"
    scripts/fetch_data.sh --tokenizer-only || { echo "SKIP test_prepare (the tokenizer could not be fetched: offline?)"; exit 0; }
fi

T=$(mktemp -d /tmp/mg_test_prepare_XXXXXX)
trap 'rm -rf "$T"' EXIT
mkdir -p "$T/in/dir"
printf 'Hello world!\n' >"$T/in/a.txt"
printf 'First part of b.\n\n\n\nSecond part of b,  with two spaces.\n\n\n\n\n\n\n\nThird\tpart 🦙.\n' >"$T/in/b.txt"
for i in 1 2 3 4 5 6 7 8 9; do
    { echo "Document $i of the directory."; for k in $(seq 1 $((i * 3))); do echo "Line $k says $((k * i)) things, naïvely."; done; } >"$T/in/dir/d$i.txt"
done
printf '   \n\t\n' >"$T/in/blank.txt"
touch "$T/in/dir/.hidden"

# ---- tokenize ----------------------------------------------------------------------------------------
out=$("$BIN" tokenize --tokenizer "$TOK" --text "Hello world!")
[ "$out" = "1 15043 3186 29991" ]; check tokenize_text $? "$out"
out=$("$BIN" tokenize --tokenizer "$TOK" --text "Hello world!" --no_bos)
[ "$out" = "15043 3186 29991" ]; check tokenize_no_bos $? "$out"
out=$("$BIN" tokenize --tokenizer "$TOK" --decode "1 15043 3186 29991")
[ "$out" = "Hello world!" ]; check tokenize_decode $? "$out"
out=$("$BIN" tokenize --tokenizer "$TOK" --decode "[1, 4853, 13, 4136, 13, 833, 29877]")
[ "$out" = $'ax\n####\nboo' ]; check tokenize_decode_list_syntax $? "brackets and commas accepted"
expect_fail tokenize_decode_refuses_out_of_range "outside the vocabulary" "$BIN" tokenize --tokenizer "$TOK" --decode "1 32000"
expect_fail tokenize_decode_refuses_garbage "not an integer" "$BIN" tokenize --tokenizer "$TOK" --decode "1 abc"
expect_fail tokenize_needs_one_mode "exactly one of" "$BIN" tokenize --tokenizer "$TOK"
expect_fail tokenize_missing_tokenizer "fetch_data.sh" "$BIN" tokenize --tokenizer "$T/none.tok" --text hi

# ---- prepare: a small set --------------------------------------------------------------------------
run_prepare() { "$BIN" prepare --tokenizer "$TOK" --quiet "$@"; }
out=$(run_prepare --out "$T/o1" --val_fraction 0.2 --seed 3 --shard_tokens 60 \
      "$T/in/a.txt" --doc_sep '\n\n\n\n' "$T/in/b.txt" --doc_sep none "$T/in/dir" "$T/in/blank.txt" 2>&1); rc=$?
check prepare_runs $rc "$(tail -n 3 <<<"$out" | tr '\n' ' ')"
grep -q '^documents 13$' "$T/o1/prepare.txt"; check prepare_counts_documents $? "$(grep '^documents\|_documents' "$T/o1/prepare.txt" | tr '\n' ' ')"
ls "$T"/o1/train/*.bin >/dev/null 2>&1 && ls "$T"/o1/val/*.bin >/dev/null 2>&1
check prepare_writes_train_and_val $? "$(ls "$T/o1/train" | wc -l) train, $(ls "$T/o1/val" | wc -l) val shards"

# Expected: each document tokenized on its own by `megalodon tokenize`.
mkdir -p "$T/docs"
"$PY" - "$T/in" "$T/docs" <<'EOF'
import os, sys
src, dst = sys.argv[1], sys.argv[2]
docs = [open(f"{src}/a.txt", "rb").read()]
docs += [d for d in open(f"{src}/b.txt", "rb").read().split(b"\n\n\n\n") if d.strip()]
docs += [open(f"{src}/dir/d{i}.txt", "rb").read() for i in range(1, 10)]
for i, d in enumerate(docs):
    open(f"{dst}/{i:03d}", "wb").write(d)
EOF
for f in "$T"/docs/*; do "$BIN" tokenize --tokenizer "$TOK" --file "$f"; done >"$T/expected.txt"

# Read every shard (train then val) with Python, following docs/data.md byte by byte.
cat >"$T/read.py" <<'EOF'
import glob, struct, sys
def read(path):
    b = open(path, "rb").read()
    magic, ver, V, tb, bos, n, nd, fp = struct.unpack_from("<8sIIIiQQQ", b, 0)
    assert magic == b"MGSHARD\0" and ver == 1 and V == 32000 and tb == 2 and bos == 1, (magic, ver, V, tb, bos)
    assert len(b) == (64 + n * tb + 7) // 8 * 8 + 8 * nd, "size"
    toks = struct.unpack_from("<%dH" % n, b, 64)
    starts = struct.unpack_from("<%dQ" % nd, b, (64 + n * tb + 7) // 8 * 8)
    assert starts[0] == 0 and all(toks[s] == 1 for s in starts)
    return [toks[s:e] for s, e in zip(starts, list(starts[1:]) + [n])], n
out = sys.argv[1]
shard_tokens = int(sys.argv[2])
train, val, sizes = [], [], []
for split, acc in (("train", train), ("val", val)):
    for p in sorted(glob.glob(f"{out}/{split}/*.bin")):
        docs, n = read(p)
        sizes.append((n, len(docs)))
        acc.extend(docs)
for d in train: print("T " + " ".join(map(str, d)))
for d in val: print("V " + " ".join(map(str, d)))
# shards respect the limit unless a single document is longer
print("SIZES " + ("ok" if all(n <= shard_tokens or k == 1 for n, k in sizes) else "bad %s" % sizes), file=sys.stderr)
EOF
"$PY" "$T/read.py" "$T/o1" 60 >"$T/got.txt" 2>"$T/sizes.txt"; rc=$?
check prepare_shards_readable_as_documented $rc "$(cat "$T/sizes.txt" | head -3 | tr '\n' ' ')"
grep -q "SIZES ok" "$T/sizes.txt"; check prepare_shard_size_limit $? "$(ls "$T/o1/train" | wc -l) train shards of <= 60 tokens"
# The multiset of documents equals the expected one; train keeps input order.
diff <(cut -d' ' -f2- "$T/got.txt" | sort) <(sort "$T/expected.txt") >/dev/null
check prepare_documents_exact $? "$(wc -l <"$T/expected.txt") documents token for token"
diff <(grep '^T ' "$T/got.txt" | cut -d' ' -f2-) <(grep -Fx -f <(grep '^T ' "$T/got.txt" | cut -d' ' -f2-) "$T/expected.txt") >/dev/null
check prepare_train_in_input_order $? ""
nval=$(grep -c '^V ' "$T/got.txt"); ntr=$(grep -c '^T ' "$T/got.txt")
vt=$(grep '^val_tokens' "$T/o1/prepare.txt" | cut -d' ' -f2); tt=$(grep '^tokens' "$T/o1/prepare.txt" | cut -d' ' -f2)
[ "$nval" -ge 1 ] && [ $((vt * 5)) -le "$tt" ]; check prepare_val_split_by_documents $? "$nval val / $ntr train documents, $vt of $tt tokens (<= 20%)"

# Determinism, and a different seed gives a different split.
run_prepare --out "$T/o2" --val_fraction 0.2 --seed 3 --shard_tokens 60 \
    "$T/in/a.txt" --doc_sep '\n\n\n\n' "$T/in/b.txt" --doc_sep none "$T/in/dir" "$T/in/blank.txt" >/dev/null 2>&1
diff -r "$T/o1" "$T/o2" >/dev/null; check prepare_deterministic $? "same seed, identical shards"
differs=0
for s in 4 5 6 7; do
    run_prepare --out "$T/o3" --val_fraction 0.2 --seed $s "$T/in/a.txt" --doc_sep '\n\n\n\n' "$T/in/b.txt" --doc_sep none "$T/in/dir" >/dev/null 2>&1
    "$PY" "$T/read.py" "$T/o3" 100000000 2>/dev/null | grep '^V ' >"$T/v3.txt"
    cmp -s <(grep '^V ' "$T/got.txt") "$T/v3.txt" || differs=1
done
[ $differs = 1 ]; check prepare_seed_changes_split $? "seeds 4..7 vs 3"

# Re-running into the same directory replaces the old shards.
touch "$T/o1/train/zz_stale.bin"
run_prepare --out "$T/o1" --val_fraction 0 "$T/in/a.txt" >/dev/null 2>&1
[ "$(ls "$T/o1/train" | wc -l)" = 1 ] && [ "$(ls "$T/o1/val" | wc -l)" = 0 ]
check prepare_replaces_old_shards $? "train: $(ls "$T/o1/train" | tr '\n' ' ') val: $(ls "$T/o1/val" | tr '\n' ' ')"

# file list input
printf '# comment\n%s\n\n%s\n' "$T/in/a.txt" "$T/in/dir" >"$T/list.txt"
run_prepare --out "$T/o4" --val_fraction 0.1 --file_list "$T/list.txt" >/dev/null 2>&1 && grep -q '^documents 10$' "$T/o4/prepare.txt"
check prepare_file_list $? "$(grep '^documents' "$T/o4/prepare.txt" 2>/dev/null)"

# ---- prepare: errors -----------------------------------------------------------------------------
expect_fail prepare_missing_input "no_such_file.txt" run_prepare --out "$T/e" "$T/in/no_such_file.txt"
expect_fail prepare_needs_out "needs --out" run_prepare "$T/in/a.txt"
expect_fail prepare_needs_inputs "at least one input" run_prepare --out "$T/e"
expect_fail prepare_bad_val_fraction "--val_fraction must be" run_prepare --out "$T/e" --val_fraction 1.5 "$T/in/a.txt"
expect_fail prepare_bad_seed "--seed expects" run_prepare --out "$T/e" --seed -3 "$T/in/a.txt"
expect_fail prepare_bad_shard_tokens "--shard_tokens must be > 0" run_prepare --out "$T/e" --shard_tokens 0 "$T/in/a.txt"
expect_fail prepare_bad_doc_sep "not a valid separator" run_prepare --out "$T/e" --doc_sep '\q' "$T/in/a.txt"
expect_fail prepare_unknown_option "unknown option '--bogus'" run_prepare --out "$T/e" --bogus 1 "$T/in/a.txt"
expect_fail prepare_option_without_value "needs a value" run_prepare --out "$T/e" "$T/in/a.txt" --seed
expect_fail prepare_only_blank_input "contain no text" run_prepare --out "$T/e" "$T/in/blank.txt"
expect_fail prepare_missing_file_list "cannot open --file_list" run_prepare --out "$T/e" --file_list "$T/none.txt"
expect_fail prepare_missing_tokenizer "fetch_data.sh" "$BIN" prepare --tokenizer "$T/none.tok" --out "$T/e" "$T/in/a.txt"

echo "# test_prepare: $pass passed, $fail failed"
[ $fail = 0 ]
