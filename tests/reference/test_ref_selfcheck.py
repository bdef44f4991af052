#!/usr/bin/python3
"""Self-checks of the PyTorch reference (tiny sizes, float64 unless stated). Prints one
`PASS name (measured vs tolerance)` or `FAIL name: ...` line per check; exit status 1 if any failed.

  /usr/bin/python3 tests/reference/test_ref_selfcheck.py        (MG_TEST_SEED=<n> changes the inputs)
"""
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback

import h5py
import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import llama_ref as LR  # noqa: E402
import megalodon_ref as R  # noqa: E402
import make_inputs  # noqa: E402

torch.set_num_threads(1)
DT = torch.float64
_seed_env = os.environ.get("MG_TEST_SEED", "1234")
SEED = int(time.time()) % 100000 if _seed_env == "random" else int(_seed_env)
torch.manual_seed(SEED)

results = []


def report(name, ok, msg):
    results.append(ok)
    print(f"PASS {name} ({msg})" if ok else f"FAIL {name}: {msg}", flush=True)


def check_close(name, got, ref, tol):
    """Worst elementwise error relative to max|ref| (floored at 1e-30)."""
    err = (got - ref).abs().max().item() / max(ref.abs().max().item(), 1e-30)
    report(name, err <= tol, f"max rel err {err:.2e}, tol {tol:.0e}")
    return err


def run(name, fn):
    try:
        fn()
    except Exception as e:  # a crashing check is a failure, not an abort of the whole script
        traceback.print_exc()
        report(name, False, f"raised {type(e).__name__}: {e}")


def rnd(*shape, scale=1.0):
    return torch.randn(*shape, dtype=DT) * scale


def cema_inputs(d, N, with_imag=True):
    al, de = rnd(d, N, scale=0.5), rnd(d, N, scale=0.5)
    th, om = rnd(d), rnd(d, scale=0.3)
    ga = rnd(d, N, 2)
    if not with_imag:
        ga[..., 1] = 0
    return al, de, th, ga, om


TINY = [  # (label, config, B, L): covers swiglu/plain, tied/untied, scale_emb, L < c, several chunks
    ("swiglu,untied,4chunks", dict(vocab_size=13, n_layers=2, model_dim=8, num_heads=2, z_dim=8, value_dim=8,
                                   ffn_hidden_dim=12, cema_ndim=3, norm_num_groups=2, chunk_size=4,
                                   swiglu=True), 2, 16),
    ("plain,tied,scale_emb,L<c", dict(vocab_size=11, n_layers=2, model_dim=8, num_heads=1, z_dim=4, value_dim=6,
                                      ffn_hidden_dim=10, cema_ndim=2, norm_num_groups=4, chunk_size=32,
                                      share_emb=True, scale_emb=True, rope_base=100.0), 2, 12),
]


def tiny_case(i, perturb=0.2, ignore_frac=0.15):
    label, values, B, L = TINY[i]
    cfg = R.make_config(values)
    P = R.init_params(cfg, seed=SEED + i, dtype=DT, perturb=perturb)
    tokens, targets = make_inputs.random_batch(cfg, B, L, SEED + i, ignore_frac)
    return label, cfg, P, tokens, targets


# ---------------------------------------------------------------------------------------------- ops

def t_tsn():
    B, L, d, G = 3, 57, 12, 3
    # per-token offsets and scales make the within-token and across-token variances both matter
    x = rnd(B, L, d) * (0.5 + rnd(B, L, 1).abs()) + rnd(B, L, 1, scale=2.0) + 1.5
    w, b = rnd(d, scale=0.3), rnd(d, scale=0.3)
    check_close("tsn_vectorised_vs_welford_loop", R.timestep_norm(x, w, b, G, 1e-5),
                R.timestep_norm_loop(x, w, b, G, 1e-5), 1e-12)
    # direct definition: population statistics of all group scalars up to t
    xg = x.view(B, L, G, d // G)
    ref = torch.empty_like(xg)
    for t in range(L):
        flat = xg[:, : t + 1].permute(0, 2, 1, 3).reshape(B, G, -1)
        mu, var = flat.mean(-1), flat.var(-1, unbiased=False)
        ref[:, t] = (xg[:, t] - mu.unsqueeze(-1)) / torch.sqrt(var + 1e-5).unsqueeze(-1)
    ref = ref.reshape(B, L, d) * (1 + w) + b
    check_close("tsn_vs_population_stats_definition", R.timestep_norm(x, w, b, G, 1e-5), ref, 1e-12)


def t_tsn_f32_long():
    # float32 at long L with a large common offset: the float64 cumulative statistics must keep the
    # float32 result at float32 accuracy (no E[x^2] - mean^2 cancellation).
    B, L, d, G = 1, 8192, 8, 2
    x = rnd(B, L, d) + 20.0
    w, b = rnd(d, scale=0.3), rnd(d, scale=0.3)
    y64 = R.timestep_norm(x, w, b, G, 1e-5)
    y32 = R.timestep_norm(x.float(), w.float(), b.float(), G, 1e-5).double()
    check_close("tsn_float32_vs_float64_L8192_offset20", y32, y64, 2e-5)


def t_cema():
    d, N = 6, 4
    al, de, th, ga, om = cema_inputs(d, N)
    for L in (1, 2, 31, 64, 100):
        check_close(f"cema_kernel_blocked_vs_direct_L{L}", R.cema_kernel(al, de, th, ga, L),
                    R.cema_kernel_direct(al, de, th, ga, L), 1e-13)
    for L in (1, 7, 64, 100):
        x = rnd(2, L, d)
        check_close(f"cema_fft_vs_recurrence_L{L}", R.cema_fft(x, al, de, th, ga, om),
                    R.cema_recurrence(x, al, de, th, ga, om), 1e-12)
    # a slowly decaying configuration (|q| close to 1) over a long sequence
    de_slow = torch.full((d, N), -8.0, dtype=DT)
    x = rnd(1, 300, d)
    check_close("cema_fft_vs_recurrence_long_memory_L300", R.cema_fft(x, al, de_slow, th, ga, om),
                R.cema_recurrence(x, al, de_slow, th, ga, om), 1e-11)


def naive_causal_attention(q, k, v):
    """One chunk, one batch row, head by head, query by query."""
    L, H, dk = q.shape
    out = torch.zeros(L, H, v.shape[-1], dtype=q.dtype)
    for h in range(H):
        for t in range(L):
            s = k[: t + 1, h] @ q[t, h]
            out[t, h] = torch.softmax(s, 0) @ v[: t + 1, h]
    return out.reshape(L, -1)


def t_attention():
    B, L, H, dk, dv, c = 2, 24, 2, 4, 3, 6
    q, k, v = rnd(B, L, H, dk), rnd(B, L, H, dk), rnd(B, L, H, dv)
    got = R.chunk_attention(q, k, v, c)
    ref = torch.cat([torch.stack([naive_causal_attention(q[b, s:s + c], k[b, s:s + c], v[b, s:s + c])
                                  for b in range(B)]) for s in range(0, L, c)], 1)
    check_close("chunk_attention_vs_independent_causal_per_chunk", got, ref, 1e-13)
    check_close("chunk_attention_vs_dense_blockdiag_mask", got, R.dense_block_attention(q, k, v, c), 1e-13)
    x = rnd(B, L, H, 8)
    check_close("rope_pairs_vs_rotation_matrices", R.rope(x, c, 100.0), R.rope_matrix(x, c, 100.0), 1e-14)
    # chunk-local positions: token t and token t + c get the same rotation
    xr = R.rope(x[:, :c].repeat(1, 2, 1, 1), c, 100.0)
    check_close("rope_chunk_local_positions", xr[:, c:], xr[:, :c], 0.0)
    # interleaved pairs: position 1 rotates (x0, x1) by angle 1 * base^0 = 1 rad
    e = torch.zeros(1, 2, 1, 4, dtype=DT)
    e[0, 1, 0, 0] = 1.0
    got = R.rope(e, 2, 100.0)[0, 1, 0]
    ref = torch.tensor([math.cos(1.0), math.sin(1.0), 0.0, 0.0], dtype=DT)
    check_close("rope_interleaved_pair_convention", got, ref, 1e-15)


def t_gradcheck_ops():
    d, N, L = 3, 2, 9
    al, de, th, ga, om = cema_inputs(d, N)
    x = rnd(2, L, d)
    args = [t.clone().requires_grad_(True) for t in (x, al, de, th, ga, om)]
    ok = torch.autograd.gradcheck(lambda *a: R.cema_fft(*a), args, eps=1e-6, atol=1e-8, rtol=1e-6,
                                  raise_exception=False)
    report("gradcheck_cema_fft", ok, "torch.autograd.gradcheck, eps 1e-6, atol 1e-8, rtol 1e-6")
    ok = torch.autograd.gradcheck(lambda *a: R.cema_recurrence(*a), args, eps=1e-6, atol=1e-8, rtol=1e-6,
                                  raise_exception=False)
    report("gradcheck_cema_recurrence", ok, "torch.autograd.gradcheck")
    xt = (rnd(2, 7, 6) + rnd(2, 7, 1, scale=2.0)).requires_grad_(True)
    w, b = rnd(6, scale=0.3).requires_grad_(True), rnd(6, scale=0.3).requires_grad_(True)
    for nm, fn in (("gradcheck_tsn_vectorised", R.timestep_norm), ("gradcheck_tsn_loop", R.timestep_norm_loop)):
        ok = torch.autograd.gradcheck(lambda x_, w_, b_: fn(x_, w_, b_, 2, 1e-5), (xt, w, b), eps=1e-6,
                                      atol=1e-8, rtol=1e-6, raise_exception=False)
        report(nm, ok, "torch.autograd.gradcheck")
    q, k, v = (rnd(1, 8, 2, 4).requires_grad_(True) for _ in range(3))
    ok = torch.autograd.gradcheck(lambda a, b_, c_: R.chunk_attention(R.rope(a, 4, 10.0), R.rope(b_, 4, 10.0), c_, 4),
                                  (q, k, v), eps=1e-6, atol=1e-8, rtol=1e-6, raise_exception=False)
    report("gradcheck_rope_chunk_attention", ok, "torch.autograd.gradcheck")


# ---------------------------------------------------------------------------------------------- model

def t_param_count():
    for label, values, _, _ in TINY + [("mega7.3B", dict(vocab_size=32000, n_layers=32, model_dim=4096,
                                                          num_heads=4, z_dim=1024, value_dim=8192,
                                                          ffn_hidden_dim=8192, cema_ndim=16, norm_num_groups=64,
                                                          swiglu=True), 0, 0)]:
        c = R.make_config(values)
        d, N, z, v, f = c.model_dim, c.cema_ndim, c.z_dim, c.value_dim, c.ffn_hidden_dim
        per_layer = (2 * d + 4 * d * N + 2 * d + d + (d * z + z) + 2 * (d * v + v) + (d * d + d) + v * d + 4 * z
                     + 2 * d + (3 if c.swiglu else 2) * d * f)
        want = c.vocab_size * d * (1 if c.share_emb else 2) + c.n_layers * per_layer + 2 * d
        got = R.count_params(c)
        report(f"param_count_spec_formula[{label}]", got == want, f"{got} vs spec 1.5 formula {want}")
    got = R.count_params(R.make_config(dict(vocab_size=32000, n_layers=32, model_dim=4096, num_heads=4,
                                            z_dim=1024, value_dim=8192, ffn_hidden_dim=8192,
                                            norm_num_groups=64, swiglu=True)))
    report("param_count_mega7.3B", got == 7385817088, f"{got} vs 7,385,817,088 (spec 8.1)")


def t_fast_vs_slow():
    for i in range(len(TINY)):
        label, cfg, P, tokens, targets = tiny_case(i)
        grads = []
        losses = []
        for slow in (False, True):
            Pg = {k: v.clone().requires_grad_(True) for k, v in P.items()}
            loss = R.loss_fn(cfg, Pg, tokens, targets, slow=slow)
            loss.backward()
            losses.append(loss.item())
            grads.append({k: v.grad for k, v in Pg.items()})
        err_l = abs(losses[0] - losses[1]) / abs(losses[1])
        worst, wname = 0.0, ""
        for k in P:
            e = (grads[0][k] - grads[1][k]).abs().max().item() / max(grads[1][k].abs().max().item(), 1e-30)
            if e > worst:
                worst, wname = e, k
        report(f"model_fast_vs_slow[{label}]", err_l < 1e-12 and worst < 1e-10,
               f"loss rel err {err_l:.1e} (tol 1e-12), worst grad rel err {worst:.1e} at {wname} (tol 1e-10)")


def t_gradcheck_model():
    for i in range(len(TINY)):
        label, cfg, P, tokens, targets = tiny_case(i)
        names = list(P.keys())
        args = [P[k].clone().requires_grad_(True) for k in names]

        def f(*a):
            return R.loss_fn(cfg, dict(zip(names, a)), tokens, targets)
        t0 = time.time()
        ok = torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-9, rtol=1e-6, raise_exception=False)
        n = sum(a.numel() for a in args)
        report(f"gradcheck_whole_model[{label}]", ok,
               f"torch.autograd.gradcheck over all {n} parameters, {time.time() - t0:.1f} s")


def t_f32_vs_f64():
    label, cfg, P, tokens, targets = tiny_case(0)
    out = {}
    for dt in (torch.float64, torch.float32):
        Pg = {k: v.detach().to(dt).clone().requires_grad_(True) for k, v in P.items()}
        loss = R.loss_fn(cfg, Pg, tokens, targets)
        loss.backward()
        out[dt] = (loss.item(), {k: v.grad.double() for k, v in Pg.items()})
    err_l = abs(out[torch.float32][0] - out[torch.float64][0]) / out[torch.float64][0]
    worst = max((out[torch.float32][1][k] - out[torch.float64][1][k]).abs().max().item()
                / max(out[torch.float64][1][k].abs().max().item(), 1e-30) for k in P)
    report("model_float32_vs_float64", err_l < 1e-6 and worst < 1e-4,
           f"loss rel err {err_l:.1e} (tol 1e-6), worst grad rel err {worst:.1e} (tol 1e-4)")


def t_loss_at_init():
    label, values, B, L = TINY[0]
    cfg = R.make_config(dict(values, vocab_size=97))
    P = R.init_params(cfg, seed=SEED, dtype=DT)
    tokens, targets = make_inputs.random_batch(cfg, 4, 32, SEED)
    lnV = math.log(cfg.vocab_size)
    loss = R.loss_fn(cfg, P, tokens, targets).item()
    # spec init: the final TSN output has unit variance and lm_head std 1/sqrt(d), so logits have std ~1
    # and the expected loss is about ln V + 1/2
    report("loss_at_spec_init_near_lnV", abs(loss - lnV - 0.5) < 0.5,
           f"loss {loss:.4f}, ln V {lnV:.4f}, expect ln V + ~0.5, tol 0.5")
    P["lm_head.weight"] = P["lm_head.weight"] * 1e-4
    loss = R.loss_fn(cfg, P, tokens, targets).item()
    report("loss_uniformish_head_equals_lnV", abs(loss - lnV) < 1e-4,
           f"loss {loss:.6f}, ln V {lnV:.6f}, |diff| {abs(loss - lnV):.1e}, tol 1e-4")


def t_ignore_index():
    label, cfg, P, tokens, targets = tiny_case(0, ignore_frac=0.3)
    loss, logits = R.loss_fn(cfg, P, tokens, targets, return_logits=True)
    lp = torch.log_softmax(logits, -1)
    keep = targets != -1
    ref = -lp[keep].gather(1, targets[keep].unsqueeze(1)).mean()
    n_ign = int((~keep).sum())
    report("loss_ignore_index_excluded", n_ign > 0 and abs(loss.item() - ref.item()) < 1e-13,
           f"{n_ign} ignored targets, |diff| {abs(loss.item() - ref.item()):.1e}")


def t_fused_head():
    for i in range(len(TINY)):
        label, cfg, P, tokens, targets = tiny_case(i, ignore_frac=0.3)
        out = []
        for fused in (False, True):
            Pg = {k: v.clone().requires_grad_(True) for k, v in P.items()}
            loss = R.loss_fn(cfg, Pg, tokens, targets, fused_head=fused)
            (loss * 1.7).backward()                                    # a non-unit upstream gradient
            out.append((loss.item(), {k: v.grad for k, v in Pg.items()}))
        err_l = abs(out[0][0] - out[1][0]) / out[0][0]
        worst = max((out[1][1][k] - out[0][1][k]).abs().max().item() / max(out[0][1][k].abs().max().item(), 1e-30)
                    for k in P)
        report(f"fused_blocked_head_vs_autograd_ce[{label}]", err_l < 1e-13 and worst < 1e-12,
               f"loss rel err {err_l:.1e} (tol 1e-13), worst grad rel err {worst:.1e} (tol 1e-12)")
    # several token blocks, including a partial last one
    x, W = rnd(37, 5), rnd(9, 5)
    t = torch.randint(0, 9, (37,))
    t[::5] = -1
    xs, Ws = x.clone().requires_grad_(True), W.clone().requires_grad_(True)
    R.LinearCrossEntropy.apply(xs, Ws, t, 8).backward()
    xr, Wr = x.clone().requires_grad_(True), W.clone().requires_grad_(True)
    F.cross_entropy(xr @ Wr.t(), t, ignore_index=-1).backward()
    err = max((xs.grad - xr.grad).abs().max().item() / xr.grad.abs().max().item(),
              (Ws.grad - Wr.grad).abs().max().item() / Wr.grad.abs().max().item())
    report("fused_blocked_head_partial_blocks", err < 1e-13, f"worst grad rel err {err:.1e}, block 8 of 37 rows")


def t_run_ref_cli():
    label, cfg, P, tokens, targets = tiny_case(0)
    conf_values = TINY[0][1]
    with tempfile.TemporaryDirectory() as tmp:
        conf = os.path.join(tmp, "t.conf")
        with open(conf, "w") as fh:
            fh.write("# test\n" + "".join(f"{k} = {str(v).lower() if isinstance(v, bool) else v}\n"
                                          for k, v in conf_values.items()) + "unknown_key = 7  # ignored\n")
        inp, outp = os.path.join(tmp, "in.h5"), os.path.join(tmp, "out.h5")
        make_inputs.write_inputs(inp, cfg, P, tokens, targets)
        # in-process reference on exactly the float32-rounded weights the file holds
        P32 = {k: v.float().double().requires_grad_(True) for k, v in P.items()}
        loss = R.loss_fn(cfg, P32, tokens, targets)
        loss.backward()
        for dtype in ("float64", "float32"):
            r = subprocess.run([sys.executable, os.path.join(HERE, "run_ref.py"), "--config", conf, "--in", inp,
                                "--out", outp, "--dtype", dtype, "--logits"], capture_output=True, text=True)
            if r.returncode != 0:
                report(f"run_ref_cli_{dtype}", False, f"exit {r.returncode}: {r.stderr.strip()[-400:]}")
                continue
            with h5py.File(outp, "r") as h:
                lossf = float(h["loss"][()])
                names_ok = set(h["grads"].keys()) == set(P.keys())
                want_dt = np.float64 if dtype == "float64" else np.float32
                shapes_ok = all(h["grads"][k].shape == tuple(P[k].shape) and h["grads"][k].dtype == want_dt
                                for k in P)
                worst = max(np.abs(h["grads"][k][()] - P32[k].grad.numpy()).max()
                            / max(np.abs(P32[k].grad.numpy()).max(), 1e-30) for k in P)
                logits_ok = h["logits"].shape == (tokens.shape[0], tokens.shape[1], cfg.vocab_size) and \
                    h["logits"].dtype == np.float32 and h["loss"].dtype == np.float64 and h["loss"].shape == ()
            tol_l, tol_g = (1e-14, 1e-12) if dtype == "float64" else (1e-6, 1e-4)
            err_l = abs(lossf - loss.item()) / loss.item()
            report(f"run_ref_cli_{dtype}", names_ok and shapes_ok and logits_ok and err_l < tol_l and worst < tol_g,
                   f"names {names_ok}, shapes/dtypes {shapes_ok and logits_ok}, loss rel err {err_l:.1e} "
                   f"(tol {tol_l:.0e}), worst grad rel err {worst:.1e} (tol {tol_g:.0e})")


# ---------------------------------------------------------------------------------------------- llama

def llama_case(kv, share=False, B=2, L=12, seed=5):
    cfg = LR.make_config(dict(vocab_size=40, n_layers=2, model_dim=24, num_heads=4, num_kv_heads=kv,
                              ffn_hidden_dim=20, rope_base=100.0, share_emb=share, scale_emb=share))
    P = {k: v.to(DT) for k, v in LR.init_params(cfg, seed=seed, perturb=0.2).items()}
    for k in P:  # larger weights than the 0.02 init, so attention patterns and FFN gates are not trivial
        if P[k].dim() == 2:
            P[k] = P[k] * 10.0
    g = torch.Generator().manual_seed(seed + 1)
    tokens = torch.randint(0, cfg.vocab_size, (B, L), generator=g)
    targets = torch.randint(0, cfg.vocab_size, (B, L), generator=g)
    targets[0, 3] = -1
    return cfg, P, tokens, targets


def t_llama():
    # the 7B's parameter count
    c7 = LR.make_config(dict(vocab_size=32000, n_layers=32, model_dim=4096, num_heads=32, ffn_hidden_dim=11008))
    got = LR.count_params(c7)
    report("llama_param_count_7b", got == 6738415616, f"{got} vs 6,738,415,616 (Llama-2 7B)")
    # RoPE: complex form vs rotation matrices of the interleaved pairs (megalodon_ref's, c = L)
    x = rnd(2, 10, 3, 8)
    check_close("llama_rope_complex_vs_rotation_matrices", LR.rope(x, 100.0), R.rope_matrix(x, 10, 100.0), 1e-14)
    for kv in (4, 2, 1):
        cfg, P, tokens, targets = llama_case(kv)
        tag = f"H4_kv{kv}"
        out = {}
        for form in ("fast", "hf", "slow"):
            Pg = {k: v.clone().requires_grad_(True) for k, v in P.items()}
            loss = LR.loss_fn(cfg, Pg, tokens, targets, hf=form == "hf", slow=form == "slow")
            loss.backward()
            out[form] = (loss.item(), {k: v.grad for k, v in Pg.items()})
        for form in ("hf", "slow"):
            err_l = abs(out[form][0] - out["fast"][0]) / abs(out["fast"][0])
            worst = max((out[form][1][k] - out["fast"][1][k]).abs().max().item()
                        / max(out["fast"][1][k].abs().max().item(), 1e-30) for k in P)
            what = ("Hugging Face layout (permuted q/k rows, rotate-half RoPE)" if form == "hf"
                    else "grouped attention without repeated keys")
            report(f"llama_{form}_vs_fast[{tag}]", err_l < 1e-13 and worst < 1e-11,
                   f"{what}: loss rel err {err_l:.1e} (tol 1e-13), worst grad rel err {worst:.1e} (tol 1e-11)")
    # causality: changing the last token changes no earlier logit
    cfg, P, tokens, targets = llama_case(2)
    t2 = tokens.clone()
    t2[:, -1] = (t2[:, -1] + 1) % cfg.vocab_size
    a, b = LR.forward(cfg, P, tokens), LR.forward(cfg, P, t2)
    report("llama_causal", torch.equal(a[:, :-1], b[:, :-1]) and not torch.equal(a[:, -1], b[:, -1]),
           "earlier logits unchanged by the last token, the last one changed")
    # whole-model gradcheck (grouped-query, tied + scaled embedding)
    cfg, P, tokens, targets = llama_case(2, share=True, L=6)
    names = list(P.keys())
    args = [P[k].clone().requires_grad_(True) for k in names]
    # eps 1e-5 and atol 1e-8: with a loss of ~4 the central difference's rounding noise is ~1e-16 * 4 / eps
    ok = torch.autograd.gradcheck(lambda *a: LR.loss_fn(cfg, dict(zip(names, a)), tokens, targets), args,
                                  eps=1e-5, atol=1e-8, rtol=1e-6, raise_exception=False)
    report("llama_gradcheck_whole_model[kv2_tied]", ok,
           f"torch.autograd.gradcheck over all {sum(a.numel() for a in args)} parameters, eps 1e-5, atol 1e-8")


def main():
    t0 = time.time()
    print(f"reference self-check: torch {torch.__version__}, seed {SEED}")
    for name, fn in [("tsn", t_tsn), ("tsn_f32_long", t_tsn_f32_long), ("cema", t_cema),
                     ("attention", t_attention), ("gradcheck_ops", t_gradcheck_ops),
                     ("param_count", t_param_count), ("fast_vs_slow", t_fast_vs_slow),
                     ("gradcheck_model", t_gradcheck_model), ("f32_vs_f64", t_f32_vs_f64),
                     ("loss_at_init", t_loss_at_init), ("ignore_index", t_ignore_index), ("fused_head", t_fused_head),
                     ("run_ref_cli", t_run_ref_cli), ("llama", t_llama)]:
        run(name, fn)
    print(f"{sum(results)} passed, {len(results) - sum(results)} failed ({time.time() - t0:.1f} s)")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
