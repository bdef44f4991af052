#!/usr/bin/env bash
# Build the quick start's default corpus: fetch everything (scripts/fetch_data.sh), then tokenize the State
# of the Union addresses, Austen's novels (cut into chapters at runs of 3 blank lines) and the Brown corpus
# into data/corpus/{train,val}/*.bin with 1% of the tokens held out for validation (whole documents).
#
#   scripts/prepare_data.sh            fetch + prepare (skips what is already done and unchanged)
#   scripts/prepare_data.sh --force    redo both
#
# Environment: MG_BUILD (build directory, default build), MG_DATA_OUT (default data/corpus).
set -euo pipefail
cd "$(dirname "$0")/.."
FORCE=0
for a in "$@"; do
    case "$a" in
        --force) FORCE=1 ;;
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "prepare_data: error: unknown option '$a' (see --help)" >&2; exit 2 ;;
    esac
done
BUILD=${MG_BUILD:-build}
OUT=${MG_DATA_OUT:-data/corpus}
t0=$(date +%s.%N)

if [ "$FORCE" = 1 ]; then scripts/fetch_data.sh --force; else scripts/fetch_data.sh; fi
t1=$(date +%s.%N)

if [ ! -x "$BUILD/megalodon" ]; then
    echo "prepare_data: building $BUILD/megalodon"
    make -j2 --no-print-directory "$BUILD/megalodon"
fi

ARGS=(--tokenizer data/tokenizer/llama2.tok --out "$OUT" --val_fraction 0.01 --seed 1
      data/text/sotu --doc_sep '\n\n\n\n' data/text/austen --doc_sep none data/text/brown)
# The inputs' checksums and the arguments decide whether the shards are still current.
stamp=$( { printf '%s\n' "${ARGS[@]}"; sha256sum data/tokenizer/llama2.tok; cat data/text/*/.done 2>/dev/null;
           sha256sum data/text/austen/austen.txt; } | sha256sum | cut -d' ' -f1)
if [ "$FORCE" = 0 ] && [ -f "$OUT/.stamp" ] && [ "$(cat "$OUT/.stamp")" = "$stamp" ] && [ -f "$OUT/prepare.txt" ]; then
    echo "prepare_data: $OUT is up to date ($(grep '^train_tokens' "$OUT/prepare.txt" | cut -d' ' -f2) train +" \
         "$(grep '^val_tokens' "$OUT/prepare.txt" | cut -d' ' -f2) val tokens); --force redoes it"
    exit 0
fi
rm -f "$OUT/.stamp"
"$BUILD/megalodon" prepare "${ARGS[@]}"
echo "$stamp" >"$OUT/.stamp"
t2=$(date +%s.%N)
awk "BEGIN{printf \"prepare_data: done: fetch %.1f s, prepare %.1f s; train_data = $OUT/train, val_data = $OUT/val\n\", $t1 - $t0, $t2 - $t1}"
