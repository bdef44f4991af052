#!/usr/bin/env bash
# The CUDA backend from the command line (docs/cuda.md):
#   - `--device cuda` on a machine without a GPU fails at once with a message that says what to do, and
#     writes nothing;
#   - training configs/tiny.conf on a CUDA backend tracks the CPU's losses step by step: the emulated
#     kernels (cuda-emu-fp32) for 6 steps always, the real GPU (cuda-fp32 and cuda, bf16) for 50 steps
#     where there is one;
#   - a checkpoint written by one device resumes on the other, and the resumed steps equal the steps of
#     the run that never stopped on the device that resumed (within the tolerance of the two devices).
# Tolerances: fp32 every step's loss within 1e-4 relative of the CPU's, bf16 within 3e-2.
set -u
BUILD=${MG_BUILD:-build}
M=$BUILD/megalodon
PY=/usr/bin/python3
T=$(mktemp -d /tmp/mg_cuda_test.XXXXXX)
trap 'rm -rf "$T"' EXIT
export OMP_NUM_THREADS=2

pass() { echo "PASS $1${2:+ ($2)}"; }
fail() { echo "FAIL $1: $2"; }
losses() { $PY -c 'import json,sys; print(" ".join(repr(json.loads(l)["loss"]) for l in open(sys.argv[1])))' "$1"; }
# compare NAME TOL "losses a" "losses b": every step's relative difference within TOL
compare() {
    $PY - "$1" "$2" "$3" "$4" <<'PYEOF'
import sys
name, tol = sys.argv[1], float(sys.argv[2])
a = [float(x) for x in sys.argv[3].split()]
b = [float(x) for x in sys.argv[4].split()]
if not a or len(a) != len(b):
    print(f"FAIL {name}: {len(a)} vs {len(b)} losses")
    sys.exit()
worst = max(abs(x - y) / abs(y) for x, y in zip(a, b))
print(("PASS" if worst <= tol else "FAIL") + f" {name} ({len(a)} steps, worst relative difference {worst:.2e}, tol {tol:.0e}; "
      f"last {a[-1]:.6f} vs {b[-1]:.6f})")
PYEOF
}

# Without HDF5 (a bare GPU machine, scripts/gpu_check.sh) the checkpoint checks cannot run; training can.
HDF5=1
$M features 2>/dev/null | grep -q '^HDF5: *yes' || HDF5=0
if ! $PY -c 'import json' 2>/dev/null; then
    echo "SKIP test_cuda ($PY cannot import json; install python3: make deps)"
    exit 0
fi
if [ ! -d data/corpus/train ] || [ ! -d data/corpus/val ]; then
    echo "# preparing the default corpus (scripts/prepare_data.sh)"
    scripts/prepare_data.sh >"$T/prepare.log" 2>&1 || { fail "prepare default corpus" "$(tail -n 5 "$T/prepare.log")"; exit 1; }
fi
TINY=(--config configs/tiny.conf --threads 2 --eval_every 1000 --eval_batches 1 --log_every 1 --ckpt_async false)

# ---- is there a GPU? ---------------------------------------------------------------------------------
t0=$(date +%s.%N)
out=$($M train "${TINY[@]}" --device cuda --precision fp32 --max_steps 1 --warmup_steps 0 --out_dir "$T/probe" 2>&1)
rc=$?
t1=$(date +%s.%N)
GPU=0
if [ $rc -eq 0 ]; then
    GPU=1
    pass "device cuda: a GPU is present and trains" "$(grep -m1 -i 'step *1' <<<"$out" | cut -c1-100)"
elif grep -q "no usable NVIDIA GPU\|has no CUDA backend" <<<"$out"; then
    fast=$($PY -c "print(int($t1 - $t0 < 20))")
    if [ "$fast" = 1 ] && ! ls "$T/probe"/ckpt_* >/dev/null 2>&1; then
        pass "device cuda without a GPU fails at once with a clear message, writing nothing" "$(grep -m1 error <<<"$out" | cut -c1-160)"
    else
        fail "device cuda without a GPU" "took $($PY -c "print(round($t1 - $t0, 1))") s or wrote a checkpoint"
    fi
    echo "SKIP cuda_gpu_training (no GPU: $(grep -m1 error <<<"$out" | cut -c1-200))"
else
    fail "device cuda" "exit $rc, neither trained nor said why: $(tail -n 3 <<<"$out" | cut -c1-300)"
fi

# ---- training tracks the CPU --------------------------------------------------------------------------
STEPS=6
[ $GPU = 1 ] && STEPS=50
$M train "${TINY[@]}" --device cpu --max_steps $STEPS --out_dir "$T/cpu" >"$T/cpu.log" 2>&1 || fail "cpu reference run" "$(tail -n 3 "$T/cpu.log")"
cpu=$(losses "$T/cpu/log.jsonl")
run_track() { # device precision steps tol
    local dev=$1 prec=$2 n=$3 tol=$4
    $M train "${TINY[@]}" --device "$dev" --precision "$prec" --max_steps $STEPS --stop_at "$n" --out_dir "$T/$dev-$prec" \
        >"$T/$dev-$prec.log" 2>&1 || { fail "train on $dev ($prec)" "$(tail -n 3 "$T/$dev-$prec.log")"; return; }
    compare "tiny on $dev ($prec) tracks the cpu losses" "$tol" "$(losses "$T/$dev-$prec/log.jsonl")" \
        "$(echo "$cpu" | cut -d' ' -f1-"$n")"
}
run_track cuda-emu fp32 6 1e-4
if [ $GPU = 1 ]; then
    run_track cuda fp32 50 1e-4
    run_track cuda bf16 50 3e-2
fi

# ---- checkpoints move between the devices --------------------------------------------------------------
if [ $HDF5 = 0 ]; then
    echo "SKIP cuda_checkpoints (this build has no HDF5, so no checkpoints; install libhdf5-dev (make deps) and rebuild)"
    exit 0
fi
# stop at step 3 on one device, resume on the other to step 5; the resumed steps equal the uninterrupted run
# of the device that resumed, to the tolerance between the devices
DEV=cuda-emu
[ $GPU = 1 ] && DEV=cuda
$M train "${TINY[@]}" --device cpu --max_steps $STEPS --stop_at 3 --out_dir "$T/x1" >"$T/x1a.log" 2>&1
if $M train "${TINY[@]}" --device $DEV --precision fp32 --max_steps $STEPS --stop_at 5 --resume auto --out_dir "$T/x1" >"$T/x1b.log" 2>&1; then
    compare "a cpu checkpoint resumes on $DEV (steps 4-5 vs the cpu run)" 1e-4 "$(losses "$T/x1/log.jsonl" | cut -d' ' -f4-5)" \
        "$(echo "$cpu" | cut -d' ' -f4-5)"
else
    fail "a cpu checkpoint resumes on $DEV" "$(tail -n 3 "$T/x1b.log")"
fi
$M train "${TINY[@]}" --device $DEV --precision fp32 --max_steps $STEPS --stop_at 3 --out_dir "$T/x2" >"$T/x2a.log" 2>&1
if $M train "${TINY[@]}" --device cpu --max_steps $STEPS --stop_at 5 --resume auto --out_dir "$T/x2" >"$T/x2b.log" 2>&1; then
    compare "a $DEV checkpoint resumes on the cpu (steps 4-5 vs the cpu run)" 1e-4 "$(losses "$T/x2/log.jsonl" | cut -d' ' -f4-5)" \
        "$(echo "$cpu" | cut -d' ' -f4-5)"
else
    fail "a $DEV checkpoint resumes on the cpu" "$(tail -n 3 "$T/x2b.log")"
fi

# ---- the CUDA backend under MPI: sequence parallelism (2 ranks) equals one process -----------------------
if $M features 2>/dev/null | grep -q '^MPI: *yes' && command -v mpirun >/dev/null 2>&1; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
    SPA=(--config configs/tiny.conf --threads 1 --eval_every 1000 --eval_batches 1 --log_every 1 --ckpt_async false
         --max_steps 3 --warmup_steps 1 --device $DEV --precision fp32)
    $M train "${SPA[@]}" --out_dir "$T/sp1" >"$T/sp1.log" 2>&1
    if mpirun -np 2 $M train "${SPA[@]}" --sp 2 --out_dir "$T/sp2" >"$T/sp2.log" 2>&1; then
        compare "$DEV under mpirun, sp 2 = one process" 1e-5 "$(losses "$T/sp2/log.jsonl")" "$(losses "$T/sp1/log.jsonl")"
    else
        fail "$DEV under mpirun, sp 2" "$(tail -n 3 "$T/sp2.log")"
    fi
    # data parallelism with the device collectives (dp_comm staged: the NCCL path's code through host memory,
    # the bits of the host path), in bf16
    DPA=(--config configs/tiny.conf --threads 1 --eval_every 1000 --eval_batches 1 --log_every 1 --ckpt_async false
         --max_steps 3 --warmup_steps 1 --device cuda-emu --precision bf16)
    mpirun -np 2 $M train "${DPA[@]}" --dp_comm host --out_dir "$T/dph" >"$T/dph.log" 2>&1
    mpirun -np 2 $M train "${DPA[@]}" --dp_comm staged --out_dir "$T/dps" >"$T/dps.log" 2>&1
    d=$($M ckpt diff "$T/dph/ckpt_00000003.h5" "$T/dps/ckpt_00000003.h5" 2>&1 | grep '^summary')
    grep -q 'identical=[1-9][0-9]* differing=0 ' <<<"$d" && pass "dp 2 in bf16: the device collectives (staged) give the host path's weights and moments bit for bit" "$d" ||
        fail "dp 2 device collectives (staged) = host path" "${d:-$(tail -n 3 "$T/dps.log")}"
    out=$(mpirun -np 2 $M train "${DPA[@]}" --device cpu --precision fp32 --dp_comm nccl --out_dir "$T/dpn" 2>&1)
    if grep -q "needs a GPU backend\|this build has no NCCL" <<<"$out"; then
        pass "dp_comm = nccl on the cpu is refused with a message" "$(grep -m1 error <<<"$out" | cut -c1-160)"
    else
        fail "dp_comm = nccl on the cpu" "$(tail -n 3 <<<"$out" | cut -c1-300)"
    fi
else
    echo "SKIP cuda_mpi (this build has no MPI or mpirun is missing; install openmpi: make deps)"
fi
