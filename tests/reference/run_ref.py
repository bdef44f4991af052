#!/usr/bin/python3
"""Loss and gradients of the reference model (MEGALODON, or Llama-2 for `arch = llama` configs) for weights
and a batch given in HDF5.

  /usr/bin/python3 tests/reference/run_ref.py --config F --in IN.h5 --out OUT.h5
      [--dtype float32|float64] [--threads n] [--logits] [--acts]

Reads (row-major):
  /model/<name>     float32, every canonical parameter of src/params.c for this config (extra datasets
                    are an error, so a name mismatch cannot go unnoticed)
  /inputs/tokens    int32 (B, L)
  /inputs/targets   int32 (B, L); -1 = ignored (excluded from the mean)
Writes:
  /loss             float64 scalar: mean cross-entropy over the non-ignored targets
  /grads/<name>     d loss / d parameter, same shape, float32 or float64 per --dtype
  /logits           float32 (B, L, V), only with --logits
  /acts/<name>      float32 intermediate activations, only with --acts (see README.md)
  attributes on /: dtype, threads, config (the resolved config as key = value text)
Gradients come from autograd on the fast (FFT CEMA, cumulative-sum TimestepNorm) forward.
"""
import argparse
import os
import sys
import time

import h5py
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_ref  # noqa: E402
import megalodon_ref as R  # noqa: E402  (replaced by llama_ref for `arch = llama` configs)


def read_inputs(path, cfg, dtype):
    specs = R.param_specs(cfg)
    params = {}
    with h5py.File(path, "r") as h:
        if "model" not in h:
            sys.exit(f"run_ref: {path} has no /model group")
        have = set(h["model"].keys())
        want = {n for n, _, _, _ in specs}
        if have != want:
            missing, extra = sorted(want - have), sorted(have - want)
            sys.exit(f"run_ref: {path}:/model does not match the config's parameters; "
                     f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
                     f"unexpected {extra[:8]}{'...' if len(extra) > 8 else ''}")
        for name, shape, _, _ in specs:
            arr = h["model"][name][()]
            if tuple(arr.shape) != tuple(shape):
                sys.exit(f"run_ref: /model/{name} has shape {arr.shape}, the config needs {shape}")
            params[name] = torch.from_numpy(np.ascontiguousarray(arr)).to(dtype).requires_grad_(True)
        tokens = torch.from_numpy(h["inputs/tokens"][()].astype(np.int64))
        targets = torch.from_numpy(h["inputs/targets"][()].astype(np.int64))
    if tokens.dim() != 2 or tokens.shape != targets.shape:
        sys.exit(f"run_ref: /inputs/tokens {tuple(tokens.shape)} and /inputs/targets {tuple(targets.shape)} "
                 "must both be (B, L)")
    if tokens.min() < 0 or tokens.max() >= cfg.vocab_size:
        sys.exit(f"run_ref: tokens outside [0, {cfg.vocab_size})")
    bad = (targets != -1) & ((targets < 0) | (targets >= cfg.vocab_size))
    if bad.any():
        sys.exit(f"run_ref: targets must be -1 or in [0, {cfg.vocab_size})")
    return params, tokens, targets


def config_text(cfg):
    return "".join(f"{k} = {v}\n" for k, v in vars(cfg).items())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--in", dest="inp", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--logits", action="store_true", help="also write /logits")
    ap.add_argument("--acts", action="store_true", help="also write /acts/* (intermediate activations)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dtype = torch.float32 if a.dtype == "float32" else torch.float64
    global R
    R = llama_ref.model_module(a.config)
    cfg = R.load_config(a.config)
    params, tokens, targets = read_inputs(a.inp, cfg, dtype)
    if (targets == -1).all():
        sys.exit("run_ref: every target is -1; the mean loss is undefined")

    t0 = time.perf_counter()
    acts = {} if a.acts else None
    loss, logits = R.loss_fn(cfg, params, tokens, targets, acts=acts, return_logits=True)
    loss.backward()
    t1 = time.perf_counter()

    with h5py.File(a.out, "w") as h:
        h.attrs["dtype"] = a.dtype
        h.attrs["threads"] = a.threads
        h.attrs["config"] = config_text(cfg)
        h.create_dataset("loss", data=np.float64(loss.item()))
        g = h.create_group("grads")
        npdt = np.float32 if dtype == torch.float32 else np.float64
        for name, p in params.items():
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            g.create_dataset(name, data=grad.detach().numpy().astype(npdt))
        if a.logits:
            h.create_dataset("logits", data=logits.detach().to(torch.float32).numpy())
        if acts is not None:
            ga = h.create_group("acts")
            for name, t in acts.items():
                ga.create_dataset(name, data=t.detach().to(torch.float32).reshape(t.shape[0], t.shape[1], -1).numpy())
    B, L = tokens.shape
    print(f"run_ref: loss {loss.item():.10f}  B={B} L={L} dtype={a.dtype} threads={a.threads} "
          f"fwd+bwd {t1 - t0:.3f} s -> {a.out}")


if __name__ == "__main__":
    main()
