#!/usr/bin/python3
"""Training-step throughput of the PyTorch reference: the CPU speed baseline for the C trainer.

  /usr/bin/python3 tests/reference/bench_ref.py --config F --seq_len L --batch_size B --threads n --steps k
      [--warmup 2] [--dtype float32|float64] [--chunk_size c] [--no_clip] [--seed s]

One step = forward + backward (autograd; the LM head + cross-entropy is the blocked LinearCrossEntropy
of megalodon_ref.py unless --plain_loss) + global-norm gradient clipping (1.0) + AdamW (lr 1e-4,
betas 0.9/0.95, eps 1e-8, weight decay 0.1 on every parameter, as spec 8.3), on weights initialised per
spec 1.5 / 2.2 and uniform random tokens. The first --warmup steps are not timed. Prints the settings,
the time of every timed step, and then the summary lines

  tokens_per_s <X>
  peak_rss_mib <Y>

(peak RSS of the whole process from getrusage(RUSAGE_SELF).ru_maxrss).
"""
import argparse
import os
import platform
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import megalodon_ref as R  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--seq_len", type=int, default=None, help="default: the config's seq_len")
    ap.add_argument("--batch_size", type=int, default=None, help="default: the config's batch_size")
    ap.add_argument("--chunk_size", type=int, default=None, help="override the config's chunk_size")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--no_clip", action="store_true", help="skip gradient clipping")
    ap.add_argument("--plain_loss", action="store_true",
                    help="materialise all logits and use autograd cross-entropy instead of the blocked fused head")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    dtype = torch.float32 if a.dtype == "float32" else torch.float64
    cfg = R.load_config(a.config, {"seq_len": a.seq_len, "batch_size": a.batch_size, "chunk_size": a.chunk_size})
    if cfg.seq_len is None:
        sys.exit("bench_ref: the config has no seq_len; pass --seq_len")
    B, L = cfg.batch_size, cfg.seq_len
    c = R.effective_chunk(cfg, L)

    params = {k: v.requires_grad_(True) for k, v in R.init_params(cfg, seed=a.seed, dtype=dtype).items()}
    plist = list(params.values())
    opt = torch.optim.AdamW(plist, lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, foreach=True)
    g = torch.Generator().manual_seed(a.seed + 1)
    tokens = torch.randint(0, cfg.vocab_size, (B, L), generator=g)
    targets = torch.randint(0, cfg.vocab_size, (B, L), generator=g)

    n_params = R.count_params(cfg)
    print(f"bench_ref: config {a.config}  params {n_params / 1e6:.2f} M  n_layers {cfg.n_layers}  d {cfg.model_dim}  "
          f"H {cfg.num_heads}  z {cfg.z_dim}  v {cfg.value_dim}  f {cfg.ffn_hidden_dim}  N {cfg.cema_ndim}  "
          f"G {cfg.norm_num_groups}  swiglu {cfg.swiglu}  V {cfg.vocab_size}")
    print(f"bench_ref: batch_size {B}  seq_len {L}  chunk {c}  dtype {a.dtype}  threads {torch.get_num_threads()}  "
          f"steps {a.steps} (+{a.warmup} warm-up)  clip {not a.no_clip}  loss {'plain' if a.plain_loss else 'fused-blocked'}  torch {torch.__version__}  "
          f"host {platform.node()} ({os.cpu_count()} cpus)")

    def step():
        opt.zero_grad(set_to_none=True)
        loss = R.loss_fn(cfg, params, tokens, targets, fused_head=not a.plain_loss)
        loss.backward()
        if not a.no_clip:
            torch.nn.utils.clip_grad_norm_(plist, 1.0)
        opt.step()
        return loss.item()

    for i in range(a.warmup):
        t0 = time.perf_counter()
        loss = step()
        print(f"warm-up {i}: loss {loss:.4f}  {time.perf_counter() - t0:.3f} s", flush=True)
    times = []
    for i in range(a.steps):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
        print(f"step {i}: loss {loss:.4f}  {times[-1]:.3f} s", flush=True)
    total = sum(times)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    if times:
        print(f"step_time_s mean {total / len(times):.4f}  min {min(times):.4f}")
        print(f"tokens_per_s {B * L * len(times) / total:.1f}")
    print(f"peak_rss_mib {rss_mib:.1f}")


if __name__ == "__main__":
    main()
