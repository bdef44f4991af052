#!/usr/bin/env bash
# `megalodon ckpt info|diff|bench` from the command line: output fields, exit codes, errors for bad
# files, and diff numbers checked against an edit made with h5py. docs/checkpoint.md.
set -u
B=${MG_BUILD:-build}/megalodon
PY=/usr/bin/python3
T=$(mktemp -d /tmp/mg_ckpt_cli.XXXXXX)
trap 'rm -rf "$T"' EXIT
pass=0; fail=0
ok()  { echo "PASS $1${2:+ ($2)}"; pass=$((pass + 1)); }
bad() { echo "FAIL $1: $2"; fail=$((fail + 1)); }
check() { # name, condition-exit-status, detail
    if [ "$2" = 0 ]; then ok "$1" "${3:-}"; else bad "$1" "${3:-}"; fi
}

if [ ! -x "$B" ]; then echo "FAIL ckpt_cli: $B not built"; exit 1; fi

if ! "$B" features | grep -q '^HDF5: *yes'; then
    "$B" ckpt info "$T/x.h5" >"$T/out" 2>&1; rc=$?
    grep -q "no HDF5; install libhdf5-dev and rebuild" "$T/out"; check ckpt_cli_without_hdf5 $(( $? || rc != 1 )) "$(head -1 "$T/out")"
    echo "SKIP ckpt_cli_hdf5 (this build has no HDF5: only the error message was tested; install libhdf5-dev: make deps, and rebuild)"
    echo "# $pass passed, $fail failed, 1 skipped"; [ $fail = 0 ]; exit
fi

# ---- make checkpoints -------------------------------------------------------------------------------
"$B" ckpt bench --mparams 0.3 --seed 1 --step 100 --out "$T/a.h5" --keep >"$T/bench.out" 2>&1; rc=$?
grep -q '^save: .* MB/s' "$T/bench.out" && grep -q '^load: .* MB/s' "$T/bench.out"
check bench_reports_throughput $(( $? || rc )) "$(grep -E '^(save|load):' "$T/bench.out" | cut -c1-60 | tr '\n' ' ')"
"$B" ckpt bench --mparams 0.3 --seed 2 --step 200 --out "$T/b.h5" --keep >/dev/null 2>&1
"$B" ckpt bench --mparams 0.3 --seed 1 --step 100 --out "$T/w.h5" --keep --weights-only >/dev/null 2>&1
[ -f "$T/a.h5" ] && [ -f "$T/b.h5" ] && [ -f "$T/w.h5" ]; check bench_keep_writes_files $? ""

# ---- info ---------------------------------------------------------------------------------------------
"$B" ckpt info "$T/a.h5" >"$T/info" 2>&1; rc=$?
grep -q '^format: *megalodon-checkpoint v1$' "$T/info" && grep -q '^step: *100$' "$T/info" &&
    grep -q '^tokens_seen: *409600$' "$T/info" && grep -q '^optimizer: *yes' "$T/info" &&
    grep -q '^  rng_state  *int64\[4\]  *1 2 3 4$' "$T/info" && grep -q '^  lr_scale  *double  *0.5$' "$T/info" &&
    grep -q '^  data_mixture  *string  *"synthetic:1.0"$' "$T/info" && grep -q '^  | arch = megalodon$' "$T/info" &&
    grep -q '^status: *ok' "$T/info"
check info_fields $(( $? || rc )) "exit $rc"
line=$(grep '^  embed.weight ' "$T/info")
echo "$line" | grep -q '\[1024, 128\]  *131072 '; check info_tensor_shape_and_count $? "$line"
ntens=$(grep -c '^  \(embed\|layers\|final_norm\|lm_head\)\.' "$T/info")
grep -q "^tensors: *$ntens in /model" "$T/info"; check info_lists_every_tensor $? "$ntens tensors"
"$B" ckpt info "$T/w.h5" >"$T/winfo" 2>&1
grep -q '^optimizer: *no (weights only)' "$T/winfo"; check info_weights_only $? ""

if [ -x "$PY" ] && "$PY" -c 'import h5py, numpy' 2>/dev/null; then
    # L2 norms printed by info equal numpy's
    l2=$(echo "$line" | awk '{print $5}'); m2=$(echo "$line" | awk '{print $6}')
    ref=$("$PY" -c '
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
print("%.9e %.9e" % tuple(np.linalg.norm(f[g + "/embed.weight"][()].astype(np.float64)) for g in ("model", "optimizer/m")))' "$T/a.h5")
    awk -v a="$l2" -v b="$m2" -v r="$ref" 'BEGIN{split(r, x, " "); e1 = (a - x[1]) / x[1]; e2 = (b - x[2]) / x[2];
        if (e1 < 0) e1 = -e1; if (e2 < 0) e2 = -e2; exit !(e1 < 1e-5 && e2 < 1e-5)}'
    check info_l2_matches_numpy $? "info $l2 $m2, numpy $ref"

    # an edit made with h5py (the CRC attribute updated as docs/checkpoint.md defines it) shows up in diff
    cp "$T/a.h5" "$T/c.h5"
    expect=$("$PY" -c '
import sys, zlib, h5py, numpy as np
f = h5py.File(sys.argv[1], "r+")
d = f["model/layers.0.attn.wz.weight"]
x = d[()]; old = float(x[3, 5]); x[3, 5] = 2.0; d[...] = x
d.attrs["crc32"] = np.uint32(zlib.crc32(x.astype("<f4").tobytes()))
print("%.9e %.9e" % (abs(2.0 - old), abs(2.0 - old) / max(abs(old), 2.0)))' "$T/c.h5")
    "$B" ckpt diff "$T/a.h5" "$T/c.h5" >"$T/diff_ac" 2>&1; rc=$?
    sum=$(grep '^summary:' "$T/diff_ac")
    echo "$sum" | grep -q 'differing=1 ' && echo "$sum" | grep -q 'only_a=0 only_b=0 shape_mismatch=0'
    check diff_finds_the_one_edited_tensor $(( $? || rc )) "$sum"
    got=$(echo "$sum" | sed -E 's/.*max_abs_diff=([^ ]+) max_rel_diff=([^ ]+).*/\1 \2/')
    awk -v g="$got" -v e="$expect" 'BEGIN{split(g, a, " "); split(e, b, " ");
        exit !((a[1] - b[1])^2 <= (1e-6 * b[1])^2 && (a[2] - b[2])^2 <= (1e-6 * b[2])^2)}'
    check diff_values_match_the_edit $? "diff $got, expected $expect"
    grep -q '^model/layers.0.attn.wz.weight ' "$T/diff_ac"; check diff_names_the_tensor $? ""

    # damaged data (CRC not updated) is reported, by info and by diff
    "$PY" -c '
import sys, h5py
f = h5py.File(sys.argv[1], "r+")
d = f["optimizer/v/embed.weight"]; x = d[()]; x[0, 0] += 1.0; d[...] = x' "$T/c.h5"
    "$B" ckpt info "$T/c.h5" >"$T/cinfo" 2>&1; rc=$?
    grep -q "CRC32" "$T/cinfo" && grep -q '^problems:' "$T/cinfo"; check info_reports_crc_mismatch $(( $? || rc != 1 )) "exit $rc"
    "$B" ckpt diff "$T/a.h5" "$T/c.h5" >"$T/diff_bad" 2>&1; rc=$?
    grep -q "optimizer/v/embed.weight.*CRC32" "$T/diff_bad"; check diff_fails_on_damaged_file $(( $? || rc != 1 )) "exit $rc"
else
    echo "SKIP ckpt_cli_h5py_checks ($PY cannot import h5py and numpy; install python3-h5py python3-numpy: make deps)"
fi

# ---- diff ---------------------------------------------------------------------------------------------
"$B" ckpt diff "$T/a.h5" "$T/a.h5" >"$T/diff_aa" 2>&1; rc=$?
sum=$(grep '^summary:' "$T/diff_aa")
n=$(echo "$sum" | sed -E 's/.*compared=([0-9]+).*/\1/')
echo "$sum" | grep -q "identical=$n differing=0 .*max_abs_diff=0.000000000e+00 max_rel_diff=0.000000000e+00" &&
    [ "$n" = $((3 * ntens)) ] && grep -q '^config: same' "$T/diff_aa"
check diff_same_file_identical $(( $? || rc )) "$sum"
"$B" ckpt diff "$T/a.h5" "$T/b.h5" >"$T/diff_ab" 2>&1; rc=$?
sum=$(grep '^summary:' "$T/diff_ab")
echo "$sum" | grep -q "identical=0 differing=$n " && grep -q '^step: 100 vs 200' "$T/diff_ab" &&
    grep -q '^config - seed = 1' "$T/diff_ab" && grep -q '^attribute rng_state: differs' "$T/diff_ab"
check diff_different_files_exit_0 $(( $? || rc )) "exit $rc; $sum"
"$B" ckpt diff "$T/a.h5" "$T/w.h5" >"$T/diff_aw" 2>&1; rc=$?
sum=$(grep '^summary:' "$T/diff_aw")
echo "$sum" | grep -q "compared=$ntens identical=$ntens differing=0 only_a=$((2 * ntens)) only_b=0"
check diff_weights_only_counts_optimizer_as_only_a $(( $? || rc )) "$sum"

# ---- errors -------------------------------------------------------------------------------------------
"$B" ckpt info "$T/nope.h5" >"$T/e1" 2>&1; rc=$?
grep -q "does not exist" "$T/e1"; check info_missing_file $(( $? || rc != 1 )) "$(cat "$T/e1")"
head -c 3000 /dev/urandom >"$T/rand.h5"
"$B" ckpt info "$T/rand.h5" >"$T/e2" 2>&1; rc=$?
grep -q "not an HDF5 file" "$T/e2"; check info_random_bytes $(( $? || rc != 1 )) "$(cat "$T/e2")"
head -c 50000 "$T/a.h5" >"$T/trunc.h5"
"$B" ckpt info "$T/trunc.h5" >"$T/e3" 2>&1; rc=$?
grep -q "truncated" "$T/e3"; check info_truncated_file $(( $? || rc != 1 )) "$(cat "$T/e3")"
"$B" ckpt diff "$T/a.h5" "$T/nope.h5" >"$T/e4" 2>&1; rc=$?
grep -q "does not exist" "$T/e4"; check diff_missing_file $(( $? || rc != 1 )) "exit $rc"
"$B" ckpt >/dev/null 2>&1; r1=$?
"$B" ckpt info >/dev/null 2>&1; r2=$?
"$B" ckpt frobnicate >/dev/null 2>&1; r3=$?
"$B" ckpt --help | grep -q '^usage: megalodon ckpt info'; r4=$?
[ $r1 = 2 ] && [ $r2 = 2 ] && [ $r3 = 2 ] && [ $r4 = 0 ]; check usage_errors_exit_2 $? "$r1 $r2 $r3 $r4"

echo "# test_ckpt_cli: $pass passed, $fail failed"
[ $fail = 0 ]
