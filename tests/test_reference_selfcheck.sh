#!/usr/bin/env bash
# Self-checks of the PyTorch reference model (tests/reference/): FFT CEMA vs recurrence, vectorised vs
# Welford-loop TimestepNorm, chunked vs independent attention, gradchecks of the ops and of whole tiny
# models, fast vs literal model, float32 vs float64, loss at init, run_ref.py's HDF5 interface.
# Needs Debian's python3-torch/numpy/h5py (`make deps`); MG_PYTHON overrides the interpreter.
set -u
PY=${MG_PYTHON:-/usr/bin/python3}
if ! "$PY" -c 'import torch, numpy, h5py' 2>/dev/null; then
    echo "SKIP reference_selfcheck ($PY cannot import torch, numpy and h5py; install python3-torch python3-h5py: make deps)"
    exit 0
fi
export PYTHONDONTWRITEBYTECODE=1 OMP_NUM_THREADS=1
exec "$PY" "$(dirname "$0")/reference/test_ref_selfcheck.py"
