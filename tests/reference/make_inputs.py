#!/usr/bin/python3
"""Write an IN.h5 for run_ref.py: random weights initialised per spec 1.5 / 2.2 and random tokens.

  /usr/bin/python3 tests/reference/make_inputs.py --config F --out IN.h5 [--seed 0]
      [--batch_size B] [--seq_len L] [--perturb 0.1] [--ignore_frac 0.1]

Layout written (all row-major):
  /model/<canonical name>   float32, shapes of src/params.c
  /inputs/tokens            int32 (B, L), uniform in [0, V)
  /inputs/targets           int32 (B, L), uniform in [0, V); a fraction --ignore_frac set to -1
--perturb s adds N(0, s^2) to every zero-initialised tensor (norm offsets, biases, Q/K affine) so that
parity tests see non-trivial values there; --ignore_frac exercises ignore_index -1.
"""
import argparse
import os
import sys

import h5py
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_ref  # noqa: E402
import megalodon_ref as R  # noqa: E402  (replaced by llama_ref for `arch = llama` configs)


def write_inputs(path, cfg, params, tokens, targets):
    with h5py.File(path, "w") as h:
        gm = h.create_group("model")
        for name, t in params.items():
            gm.create_dataset(name, data=t.detach().to(torch.float32).numpy())
        gi = h.create_group("inputs")
        gi.create_dataset("tokens", data=np.asarray(tokens, dtype=np.int32))
        gi.create_dataset("targets", data=np.asarray(targets, dtype=np.int32))


def random_batch(cfg, B, L, seed, ignore_frac=0.0):
    g = torch.Generator().manual_seed(seed + 1)
    tokens = torch.randint(0, cfg.vocab_size, (B, L), generator=g, dtype=torch.int64)
    targets = torch.randint(0, cfg.vocab_size, (B, L), generator=g, dtype=torch.int64)
    if ignore_frac > 0:
        drop = torch.rand(B, L, generator=g) < ignore_frac
        targets[drop] = -1
    return tokens, targets


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch_size", type=int, default=None, help="default: the config's batch_size")
    ap.add_argument("--seq_len", type=int, default=None, help="default: the config's seq_len")
    ap.add_argument("--perturb", type=float, default=0.0)
    ap.add_argument("--ignore_frac", type=float, default=0.0)
    a = ap.parse_args()
    global R
    R = llama_ref.model_module(a.config)
    cfg = R.load_config(a.config, {"batch_size": a.batch_size, "seq_len": a.seq_len})
    if cfg.seq_len is None:
        sys.exit("make_inputs: the config has no seq_len; pass --seq_len")
    params = R.init_params(cfg, seed=a.seed, perturb=a.perturb)
    tokens, targets = random_batch(cfg, cfg.batch_size, cfg.seq_len, a.seed, a.ignore_frac)
    write_inputs(a.out, cfg, params, tokens, targets)
    print(f"wrote {a.out}: {len(params)} tensors, {R.count_params(cfg)} parameters, "
          f"tokens {cfg.batch_size}x{cfg.seq_len}")


if __name__ == "__main__":
    main()
