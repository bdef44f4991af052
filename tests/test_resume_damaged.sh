#!/usr/bin/env bash
# Damaged checkpoints in a run directory (docs/checkpoint.md "What a load verifies"): `train --resume auto`
# skips a newest checkpoint that fails verification for the newest one that passes and says so on
# stderr; with none valid it refuses; an explicit `--resume FILE` that is damaged is refused (no
# fallback); `ckpt info` verifies every tensor's CRC32, says so, and names the damaged tensor.
# Synthetic shards (vocabulary 256) keep it independent of the downloaded corpus and fast.
set -u
cd "$(dirname "$0")/.."
M=${MG_BUILD:-build}/megalodon
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
pass() { echo "PASS $1${2:+ ($2)}"; }
fail() { echo "FAIL $1: $2"; }
[ -x "$M" ] || { echo "FAIL test_resume_damaged: $M not built (make)"; exit 1; }
if ! $M features 2>/dev/null | grep -q '^HDF5: *yes'; then
    echo "SKIP test_resume_damaged (this build has no HDF5, so no checkpoints; install libhdf5-dev (make deps) and rebuild)"
    exit 0
fi
if ! $PY -c 'import struct, h5py' 2>/dev/null; then
    echo "SKIP test_resume_damaged ($PY cannot import h5py, which finds a tensor's bytes to damage; install python3-h5py: make deps)"
    exit 0
fi
T=$(mktemp -d /tmp/mg_test_resume_damaged.XXXXXX)
trap 'rm -rf "$T"' EXIT
export OMP_NUM_THREADS=1

# One shard per split in the documented format: vocabulary 256, uint16 tokens, unmarked documents.
$PY - "$T" <<'EOF'
import os, random, struct, sys
random.seed(7)
for split, n in (("train", 20000), ("val", 2000)):
    os.makedirs(os.path.join(sys.argv[1], split))
    toks = [random.randrange(1, 256) for _ in range(n)]
    body = struct.pack("<%dH" % n, *toks)
    body += b"\0" * ((-len(body)) % 8)
    hdr = b"MGSHARD\0" + struct.pack("<IIIiQQQ", 1, 256, 2, -1, n, 1, 0) + b"\0" * 16
    with open(os.path.join(sys.argv[1], split, "s0.bin"), "wb") as f:
        f.write(hdr + body + struct.pack("<Q", 0))
EOF
RUN=(--config configs/tiny.conf --vocab_size 256 --threads 1 --train_data "$T/train" --val_data "$T/val"
     --eval_every 0 --log_every 100 --ckpt_every 2 --ckpt_keep 0)
# damage FILE: flip one bit inside the data of the last tensor of /optimizer/v (the file's header and
# root attributes stay valid, so only the full verification of a load can notice).
damage() {
    $PY - "$1" <<'EOF'
import sys, h5py
with h5py.File(sys.argv[1], "r") as f:
    g = f["optimizer/v"]
    d = g[list(g.keys())[-1]]
    off = d.id.get_offset() + d.id.get_storage_size() // 2
with open(sys.argv[1], "r+b") as f:
    f.seek(off); b = f.read(1); f.seek(off); f.write(bytes([b[0] ^ 0x10]))
EOF
}

out=$($M train "${RUN[@]}" --out_dir "$T/run" --max_steps 6 2>&1)
if [ $? -ne 0 ] || [ ! -f "$T/run/ckpt_00000006.h5" ] || [ ! -f "$T/run/ckpt_00000004.h5" ]; then
    fail "train_writes_checkpoints" "$(tail -n 5 <<<"$out")"
    exit 1
fi
info=$($M ckpt info "$T/run/ckpt_00000006.h5" 2>&1)
[ $? -eq 0 ] && grep -qE '^status: +ok \([0-9]+ tensors, all checksums verified' <<<"$info" &&
    pass "ckpt_info_says_all_checksums_verified" "$(grep '^status' <<<"$info")" ||
    fail "ckpt_info_says_all_checksums_verified" "$(tail -n 2 <<<"$info")"

damage "$T/run/ckpt_00000006.h5"
cp -r "$T/run" "$T/all"
info=$($M ckpt info "$T/run/ckpt_00000006.h5" 2>&1)
rc=$?
[ $rc -ne 0 ] && grep -q "tensor '/optimizer/v/.*is corrupt" <<<"$info" && ! grep -q '^status: *ok' <<<"$info" &&
    pass "ckpt_info_names_the_damaged_tensor" "exit $rc: $(grep -m1 'is corrupt' <<<"$info" | sed 's/^ *//' | cut -c1-160)" ||
    fail "ckpt_info_names_the_damaged_tensor" "exit $rc: $(tail -n 3 <<<"$info")"

out=$($M train "${RUN[@]}" --out_dir "$T/run" --max_steps 8 --resume "$T/run/ckpt_00000006.h5" 2>&1)
rc=$?
[ $rc -ne 0 ] && grep -q "is corrupt" <<<"$out" && ! grep -q "resumed from" <<<"$out" &&
    pass "explicit_resume_of_damaged_file_refused" "exit $rc" ||
    fail "explicit_resume_of_damaged_file_refused" "exit $rc: $(tail -n 3 <<<"$out")"

out=$($M train "${RUN[@]}" --out_dir "$T/run" --max_steps 8 --resume auto 2>"$T/err")
rc=$?
err=$(cat "$T/err")
[ $rc -eq 0 ] && grep -q "skipping damaged checkpoint .*ckpt_00000006.h5: .*corrupt" <<<"$err" &&
    grep -q "using .*ckpt_00000004.h5" <<<"$err" && grep -q "resumed from .*ckpt_00000004.h5 at step 4" <<<"$out" &&
    grep -q "done: 8 steps" <<<"$out" &&
    pass "resume_auto_skips_damaged_newest" "$(grep -m1 skipping <<<"$err" | cut -c1-140)... / $(grep -m1 using <<<"$err" | cut -c1-100)" ||
    fail "resume_auto_skips_damaged_newest" "exit $rc; stderr: $(tail -n 3 <<<"$err"); stdout: $(tail -n 2 <<<"$out")"

damage "$T/all/ckpt_00000004.h5"
damage "$T/all/ckpt_00000002.h5"
out=$($M train "${RUN[@]}" --out_dir "$T/all" --max_steps 8 --resume auto 2>&1)
rc=$?
[ $rc -ne 0 ] && grep -q "none of the 3 checkpoints .* passed verification" <<<"$out" && ! grep -q "resumed from" <<<"$out" &&
    [ "$(ls "$T/all" | grep -c '^ckpt_')" = 3 ] &&
    pass "resume_auto_refuses_when_none_is_valid" "exit $rc" ||
    fail "resume_auto_refuses_when_none_is_valid" "exit $rc: $(tail -n 3 <<<"$out")"
