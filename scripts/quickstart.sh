#!/usr/bin/env bash
# The whole main job in one command, on a fresh Debian machine:
#   install missing packages -> build -> fetch and tokenize the default corpus -> train configs/small.conf
#   (a few hundred steps; the loss falls from ~10.4) -> print a sample from the trained model.
# Re-running continues or reuses the same run (runs/small, --resume auto).
# Extra arguments go to `megalodon train` (e.g. --max_steps 100 --threads 4).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
echo "== 1/5 system packages"
scripts/setup.sh
echo "== 2/5 build"
make -s -j"$(nproc)" all
echo "== 3/5 default corpus (State of the Union, Austen, Brown) with the Llama-2 tokenizer"
scripts/prepare_data.sh
echo "== 4/5 train configs/small.conf"
build/megalodon train --config configs/small.conf --resume auto "$@"
OUT=runs/small
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
    --out_dir) OUT=${args[i + 1]:-$OUT} ;;
    --out_dir=*) OUT=${args[i]#--out_dir=} ;;
    esac
done
CKPT="$OUT/$(cat "$OUT/latest")"
echo "== 5/5 sample from $CKPT"
build/megalodon sample --ckpt "$CKPT" --prompt "It is a truth universally acknowledged, that" \
    --max_new_tokens 80 --temperature 0.8 --top_k 50
echo "== done in $(( $(date +%s) - t0 )) s: checkpoints and log.jsonl in $OUT/"
