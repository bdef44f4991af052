#!/usr/bin/env python3
"""Convert state dicts saved with torch.save (e.g. by the official Megalodon code) into one safetensors
file, for `megalodon import megalodon-torch` (src/cmd_weights.c), which runs this script with
/usr/bin/python3 and maps the names itself (docs/weights.md).

    torch_to_safetensors.py --out OUT.safetensors FILE [FILE ...]

* Each FILE is read with torch.load(map_location="cpu"). A file may hold the state dict itself or a dict
  with it under "model", "state_dict" or "module" (training checkpoints).
* Several files are shards holding disjoint tensors; a name found in two files is refused (model-parallel
  shards that split one tensor must be consolidated first).
* Wrapper segments of the names are dropped: a leading "module." (DataParallel) and every
  "_fsdp_wrapped_module." / "_checkpoint_wrapped_module." / "_fpw_module." (FSDP and activation
  checkpointing wrappers); nothing else is renamed.
* Floating-point tensors (float32, bfloat16, float16, float64) are written as F32, integer tensors (the
  TimestepNorm's prior_count buffer) as I64; any other type (bool, complex, quantised) is refused, naming
  the tensor.
* OUT is created exclusively (an existing file is never overwritten). Exit status 0, or 1 with one line
  "error: ..." on stderr.
"""
import argparse
import json
import struct
import sys

WRAPPERS = {"_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_fpw_module"}


def die(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


def unwrap(obj, path, torch):
    """The state dict inside what torch.load returned."""
    for _ in range(3):
        if isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
            return obj
        if isinstance(obj, dict):
            for key in ("model", "state_dict", "module"):
                if key in obj and isinstance(obj[key], dict):
                    obj = obj[key]
                    break
            else:
                break
        else:
            break
    if isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
        return obj
    if isinstance(obj, dict):
        bad = [k for k, v in obj.items() if not torch.is_tensor(v)][:5]
        die(f"{path}: not a state dict of tensors (entries that are not tensors: {', '.join(map(str, bad))}); "
            "save model.state_dict(), or a dict with it under 'model'")
    die(f"{path}: holds a {type(obj).__name__}, not a state dict; save model.state_dict()")


def clean(name):
    parts = name.split(".")
    if parts and parts[0] == "module":
        parts = parts[1:]
    return ".".join(p for p in parts if p not in WRAPPERS)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    try:
        import torch
    except ImportError as e:
        die(f"reading torch.save files needs PyTorch in {sys.executable} ({e}); install python3-torch")

    tensors, where = {}, {}
    for path in a.files:
        try:
            obj = torch.load(path, map_location="cpu")
        except Exception as e:  # noqa: BLE001 - the message names the file either way
            die(f"cannot read {path} with torch.load: {e}")
        for key, t in unwrap(obj, path, torch).items():
            name = clean(str(key))
            if name in tensors:
                die(f"tensor '{name}' is in both {where[name]} and {path}: shards must hold disjoint tensors "
                    "(model-parallel shards that split one tensor are not supported; consolidate them first)")
            if t.is_floating_point():
                arr, dt = t.detach().to(torch.float32).contiguous().numpy(), "F32"
            elif t.dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
                arr, dt = t.detach().to(torch.int64).contiguous().numpy(), "I64"
            else:
                die(f"{path}: tensor '{name}' has dtype {t.dtype}; only floating-point and integer tensors are read")
            tensors[name], where[name] = (arr, dt), path

    header, off = {"__metadata__": {"format": "pt", "source": "torch_to_safetensors.py"}}, 0
    for name, (arr, dt) in tensors.items():
        n = arr.nbytes
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    try:
        with open(a.out, "xb") as f:
            f.write(struct.pack("<Q", len(h)))
            f.write(h)
            for arr, _ in tensors.values():
                f.write(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
    except OSError as e:
        die(f"cannot write {a.out}: {e}")


if __name__ == "__main__":
    main()
