#!/usr/bin/env bash
# Planted symlinks and multi-process launches, through the command line (docs/training.md, "What is never
# written"): `train` and `prepare` with a symlink to a victim file planted at every name they create
# either work without following it or refuse with a message naming the path, and the victim stays
# byte-for-byte unchanged; a `latest` naming a file outside out_dir is refused on --resume auto; a launch
# as several processes (the launcher's environment variables, and a real `mpirun -np 2` when Open MPI is
# installed) is refused before anything is written. The primitives are tested in test_fsutil.c.
set -u
cd "$(dirname "$0")/.."
BUILD=${MG_BUILD:-build}
M=$BUILD/megalodon
TOK=data/tokenizer/llama2.tok
T=$(mktemp -d /tmp/mg_test_symlinks.XXXXXX)
trap 'rm -rf "$T"' EXIT
export OMP_NUM_THREADS=2

check() { # check NAME STATUS DETAIL
    if [ "$2" = 0 ]; then echo "PASS $1${3:+ ($3)}"; else echo "FAIL $1: ${3:-}"; fi
}

[ -x "$M" ] || { echo "FAIL test_symlinks: $M not built (make)"; exit 1; }
if ! $M features 2>/dev/null | grep -q '^HDF5: *yes'; then
    echo "SKIP test_symlinks (this build has no HDF5, so no checkpoints; install libhdf5-dev (make deps) and rebuild)"
    exit 0
fi
if [ ! -f "$TOK" ]; then
    echo "# $TOK missing; running scripts/fetch_data.sh --tokenizer-only"
    scripts/fetch_data.sh --tokenizer-only >/dev/null 2>&1 || { echo "SKIP test_symlinks (the tokenizer could not be fetched: offline?)"; exit 0; }
fi

# The victim: a file outside every directory the commands write to.
mkdir -p "$T/victim" "$T/in"
VICTIM=$T/victim/victim.txt
printf 'victim: must never change\n' >"$VICTIM"
cp "$VICTIM" "$T/victim.orig"
intact() { cmp -s "$VICTIM" "$T/victim.orig"; }
plant() { for n in "$@"; do rm -f "$n"; ln -s "$VICTIM" "$n"; done; }
regular() { for n in "$@"; do [ -f "$n" ] && [ ! -L "$n" ] || return 1; done; }

# ---- prepare: shards, their temp files and prepare.txt ------------------------------------------------
for d in $(seq 1 40); do
    for k in $(seq 1 12); do printf 'the quick brown fox %d jumps over the lazy dog %d times. ' "$d" "$k"; done
    printf '\n\n\n\n'
done >"$T/in/text.txt"
# clean shards for the training runs below (so that each check stands on its own)
$M prepare --tokenizer "$TOK" --out "$T/data" --val_fraction 0 --quiet "$T/in/text.txt" >/dev/null 2>&1 ||
    { echo "FAIL test_symlinks: prepare of the test corpus failed"; exit 1; }
P=$T/prep
mkdir -p "$P/train" "$P/val"
plant "$P/prepare.txt" "$P/train/train_00000.bin" "$P/train/train_00000.bin.tmp" "$P/val/val_00000.bin" \
      "$P/val/val_00000.bin.tmp"
out=$($M prepare --tokenizer "$TOK" --out "$P" --val_fraction 0.1 --doc_sep '\n\n\n\n' --quiet "$T/in/text.txt" 2>&1)
rc=$?
ok=1
{ [ $rc = 0 ] && intact && regular "$P/prepare.txt" "$P/train/train_00000.bin" "$P/val/val_00000.bin"; } || ok=0
[ -z "$(find "$P" -name '*.tmp' ! -type l)" ] || ok=0
check prepare_replaces_planted_symlinks "$((1 - ok))" "rc $rc; $(tail -n 1 <<<"$out" | cut -c1-160)"

# OUT/train a symlink to another directory: refused, nothing written or deleted there
mkdir -p "$T/victim/shards"
printf 'keep' >"$T/victim/shards/keep.bin"
P2=$T/prep2
mkdir -p "$P2"
ln -s "$T/victim/shards" "$P2/train"
out=$($M prepare --tokenizer "$TOK" --out "$P2" --val_fraction 0.1 --doc_sep '\n\n\n\n' --quiet "$T/in/text.txt" 2>&1)
rc=$?
[ $rc != 0 ] && grep -q "$P2/train' is a symbolic link" <<<"$out" && [ "$(cat "$T/victim/shards/keep.bin")" = keep ] &&
    [ "$(ls "$T/victim/shards")" = keep.bin ]
check prepare_refuses_symlinked_split_dir $? "rc $rc; $(grep -m1 error <<<"$out" | cut -c1-200)"

# ---- train: a fresh run with symlinks at every name it creates ---------------------------------------
TINY=(--config configs/tiny.conf --threads 2 --train_data "$T/data/train" --val_data "" --max_steps 4 --warmup_steps 1
      --ckpt_every 2 --log_every 2)
R=$T/run
mkdir -p "$R"
# the names earlier versions used for the write probe and the temp files, and every final name but
# `latest` (a symlinked `latest` is refused, below)
plant "$R/log.jsonl" "$R/config.txt" "$R/latest.tmp" "$R/ckpt_00000002.h5" "$R/ckpt_00000002.h5.tmp" \
      "$R/ckpt_00000004.h5.tmp"
# the old probe name contained the pid: plant it for the pid the command will have (exec keeps it)
out=$(sh -c 'ln -s "$1" "$2/.megalodon_write_test.$$"; shift 2; exec "$@"' sh "$VICTIM" "$R" \
      $M train "${TINY[@]}" --out_dir "$R" 2>&1)
rc=$?
ok=1
{ [ $rc = 0 ] && intact && regular "$R/log.jsonl" "$R/config.txt" "$R/latest" "$R/ckpt_00000002.h5" \
    "$R/ckpt_00000004.h5" && [ "$(cat "$R/latest")" = ckpt_00000004.h5 ]; } || ok=0
[ "$(wc -l <"$R/log.jsonl")" = 4 ] || ok=0
check train_replaces_planted_symlinks "$((1 - ok))" "rc $rc; $(grep -m1 -E 'done:|error' <<<"$out" | cut -c1-160)"

# a planted `latest` symlink: refused, naming it
R2=$T/run2
mkdir -p "$R2"
plant "$R2/latest"
out=$($M train "${TINY[@]}" --out_dir "$R2" 2>&1)
rc=$?
[ $rc != 0 ] && intact && grep -q "$R2/latest' is a symbolic link" <<<"$out" && [ ! -e "$R2/log.jsonl" ]
check train_refuses_symlinked_latest $? "rc $rc; $(grep -m1 error <<<"$out" | cut -c1-200)"

# ---- resume: a symlinked log.jsonl is not appended to; `latest` naming a file outside is refused -------
plant "$R/log.jsonl"
out=$($M train "${TINY[@]}" --out_dir "$R" --max_steps 6 --resume auto 2>&1)
rc=$?
[ $rc != 0 ] && intact && grep -q "$R/log.jsonl' is a symbolic link" <<<"$out" && [ ! -e "$R/ckpt_00000006.h5" ]
check resume_refuses_symlinked_log $? "rc $rc; $(grep -m1 error <<<"$out" | cut -c1-200)"
rm -f "$R/log.jsonl"

mkdir -p "$T/outside"
cp "$R/ckpt_00000004.h5" "$T/outside/ckpt_00000004.h5"
ok=1
for target in "../outside/ckpt_00000004.h5" "$T/outside/ckpt_00000004.h5"; do
    echo "$target" >"$R/latest.new" && mv "$R/latest.new" "$R/latest"
    out=$($M train "${TINY[@]}" --out_dir "$R" --max_steps 6 --resume auto 2>&1)
    rc=$?
    if ! { [ $rc != 0 ] && grep -q "refusing to load a checkpoint from outside out_dir" <<<"$out" &&
           [ ! -e "$R/ckpt_00000006.h5" ] && [ ! -e "$R/log.jsonl" ]; }; then
        ok=0
        echo "# latest '$target': rc $rc: $(tail -n 2 <<<"$out")"
    fi
done
check resume_refuses_latest_outside_out_dir "$((1 - ok))" "$(grep -m1 error <<<"$out" | cut -c1-200)"

# ---- several processes: only `train` forms a distributed run (tests/test_dist.sh); the commands that run
# in one process refuse the launch before writing anything ---------------------------------------------
ok=1
for env in "OMPI_COMM_WORLD_SIZE=2 OMPI_COMM_WORLD_RANK=0" "PMI_SIZE=2 PMI_RANK=0" "SLURM_STEP_NUM_TASKS=2 SLURM_PROCID=0"; do
    out=$(env $env $M prepare --tokenizer "$TOK" --out "$T/mpi_env" "$T/in/text.txt" 2>&1)
    rc=$?
    if ! { [ $rc != 0 ] && grep -q "started as 2 processes" <<<"$out" && grep -q "runs in one process" <<<"$out" &&
           [ ! -e "$T/mpi_env" ]; }; then
        ok=0
        echo "# $env: rc $rc: $out"
    fi
done
out=$(env OMPI_COMM_WORLD_SIZE=2 OMPI_COMM_WORLD_RANK=1 $M prepare --tokenizer "$TOK" --out "$T/mpi_env" "$T/in/text.txt" 2>&1)
rc=$?
{ [ $rc != 0 ] && [ -z "$out" ] && [ ! -e "$T/mpi_env" ]; } || { ok=0; echo "# rank 1: rc $rc: '$out'"; }
check launch_env_refused "$((1 - ok))" "Open MPI, PMI and srun variables; rank 1 exits silently"
# a Slurm batch script of a job with several tasks that runs megalodon directly starts one process
out=$(env SLURM_NTASKS=4 SLURM_PROCID=0 SLURM_JOB_ID=1 $M prepare --tokenizer "$TOK" --out "$T/slurm1" --quiet "$T/in/text.txt" 2>&1)
rc=$?
[ $rc = 0 ] && [ -f "$T/slurm1/prepare.txt" ]
check launch_slurm_batch_script_allowed $? "rc $rc"

if command -v mpirun >/dev/null 2>&1; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
    out=$(timeout 120 mpirun -np 2 $M prepare --tokenizer "$TOK" --out "$T/mpirun" "$T/in/text.txt" 2>&1)
    rc=$?
    if grep -q "started as 2 processes" <<<"$out"; then
        n=$(grep -c "runs in one process" <<<"$out")
        [ $rc != 0 ] && [ "$n" = 1 ] && [ ! -e "$T/mpirun" ]
        check mpirun_np2_refused $? "rc $rc, $n message(s), no out_dir"
    elif [ $rc != 0 ] && [ ! -e "$T/mpirun" ] && grep -qiE 'mpirun|prte|orte|pmix|not enough slots' <<<"$out"; then
        # mpirun itself could not start processes here (a container without the network it wants)
        echo "# mpirun could not start: $(tail -n 3 <<<"$out")"
        check mpirun_np2_refused 0 "mpirun could not start processes here; the environment checks above cover the launch"
    else
        check mpirun_np2_refused 1 "rc $rc: $(tail -n 5 <<<"$out")"
    fi
else
    echo "# mpirun not installed: the launcher environment checks above stand in for it"
fi
intact
check victim_unchanged_at_the_end $? "$VICTIM"
