#!/usr/bin/env bash
# Install the Debian packages the project needs, if any are missing. Called by `make deps` and
# `make test`; safe to run again (it does nothing when everything is present).
# Set MG_SKIP_SETUP=1 to skip entirely (e.g. on a machine you manage yourself).
set -euo pipefail

if [ "${MG_SKIP_SETUP:-0}" = 1 ]; then
    echo "setup: skipped (MG_SKIP_SETUP=1)"
    exit 0
fi

PACKAGES=(
    build-essential pkg-config curl ca-certificates
    libopenblas-openmp-dev libopenblas0-openmp      # BLAS for the CPU backend (OpenMP flavour)
    openmpi-bin libopenmpi-dev                       # mpirun / mpicc
    libhdf5-dev hdf5-tools                           # checkpoints (serial HDF5), h5dump
    zlib1g-dev                                       # checkpoints' CRC32
    python3 python3-numpy python3-torch python3-h5py # PyTorch reference implementation and tests
    python3-sentencepiece python3-protobuf           # building/verifying the Llama-2 tokenizer model
    python3-matplotlib                               # scripts/plot_runs.py: PNG curves of runs' log.jsonl
    clang libclang-rt-dev                            # fuzz harnesses (tests/fuzz/): libFuzzer, ASan/UBSan runtimes
)

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "setup: all ${#PACKAGES[@]} Debian packages present"
    exit 0
fi

echo "setup: installing ${#missing[@]} missing Debian packages: ${missing[*]}"
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "setup: error: need root (or sudo) to install: ${missing[*]}" >&2
        echo "setup: install them yourself, or set MG_SKIP_SETUP=1 to build without them" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
# A fresh machine may have empty package lists.
if [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e lock -e partial)" ] || \
   ! $SUDO apt-get install -y --no-install-recommends --dry-run "${missing[@]}" >/dev/null 2>&1; then
    $SUDO apt-get update -q
fi
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "setup: done"
