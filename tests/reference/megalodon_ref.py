"""An independent PyTorch implementation of the MEGALODON language model, written from
/work/shared/docs/megalodon-spec.md (sections 1-5, 11, 12) and the model semantics the C trainer
implements. It is the model-level oracle (loss and gradients by autograd, float64) and the speed
baseline (float32) for the C code.

Layout: activations are (B, L, d) row-major; parameters use the canonical names and shapes of
src/params.c (the contract; see param_specs()).

Every op exists in a fast form (used by the model) and, where the fast form is a reformulation, in a
plain form that follows the definition literally (used only by the self-checks):
  * TimestepNorm: cumulative sums over time  |  block-Welford loop over tokens (spec 3.2)
  * CEMA:         FFT convolution with the closed-form kernel (spec 2.3)  |  the complex recurrence
  * attention:    batched matmuls per chunk  |  one dense L x L block-diagonal causal mask
  * RoPE:         interleaved pair arithmetic  |  explicit 2x2 rotation matrices
Run with Debian's /usr/bin/python3 (torch 1.13).
"""
import math
from collections import OrderedDict
from types import SimpleNamespace

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------
# configuration

# Defaults follow the spec (8.1: N = 16, eps 1e-5, rope_base 1e4, swiglu/scale_emb/share_emb off);
# the model sizes have no meaningful default, so a config must set them.
CONFIG_DEFAULTS = dict(
    vocab_size=None, n_layers=None, model_dim=None, num_heads=1, z_dim=None, value_dim=None,
    ffn_hidden_dim=None, cema_ndim=16, norm_num_groups=None, chunk_size=2048, rope_base=10000.0,
    norm_eps=1e-5, swiglu=False, scale_emb=False, share_emb=False, seq_len=None, batch_size=1,
)
_INT_KEYS = {"vocab_size", "n_layers", "model_dim", "num_heads", "z_dim", "value_dim", "ffn_hidden_dim",
             "cema_ndim", "norm_num_groups", "chunk_size", "seq_len", "batch_size"}
_FLOAT_KEYS = {"rope_base", "norm_eps"}
_BOOL_KEYS = {"swiglu", "scale_emb", "share_emb"}


def _parse_bool(key, s):
    t = s.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"config key '{key}': '{s}' is not a boolean (use true/false)")


def make_config(values):
    """Config from a dict of already-typed or string values; unknown keys are ignored."""
    cfg = dict(CONFIG_DEFAULTS)
    for k, v in values.items():
        if k not in cfg:
            continue
        if isinstance(v, str):
            if k in _INT_KEYS:
                v = int(float(v)) if v.strip().lower() not in ("", "none") else None
            elif k in _FLOAT_KEYS:
                v = float(v)
            elif k in _BOOL_KEYS:
                v = _parse_bool(k, v)
        cfg[k] = v
    missing = [k for k in ("vocab_size", "n_layers", "model_dim", "z_dim", "value_dim", "ffn_hidden_dim",
                           "norm_num_groups") if cfg[k] is None]
    if missing:
        raise ValueError(f"config lacks required keys: {', '.join(missing)}")
    c = SimpleNamespace(**cfg)
    if c.z_dim % c.num_heads or c.value_dim % c.num_heads:
        raise ValueError(f"z_dim ({c.z_dim}) and value_dim ({c.value_dim}) must be multiples of num_heads ({c.num_heads})")
    if (c.z_dim // c.num_heads) % 2:
        raise ValueError(f"z_dim/num_heads ({c.z_dim // c.num_heads}) must be even for RoPE")
    if c.model_dim % c.norm_num_groups:
        raise ValueError(f"model_dim ({c.model_dim}) must be a multiple of norm_num_groups ({c.norm_num_groups})")
    return c


def load_config(path, overrides=None):
    """Parse a `key = value` file (`#` comments, unknown keys ignored) plus optional overrides."""
    values = {}
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            if "=" not in line:
                raise ValueError(f"{path}:{lineno}: expected 'key = value', got '{line}'")
            k, v = line.split("=", 1)
            values[k.strip()] = v.strip().strip('"').strip("'")
    if overrides:
        values.update({k: v for k, v in overrides.items() if v is not None})
    return make_config(values)


# ----------------------------------------------------------------------------------------------
# parameters (names, shapes and order exactly as src/params.c)

def param_specs(cfg):
    """[(name, shape, init, fan_in)] in the canonical order. init is one of zero, he, embed,
    cema_ad, cema_theta, cema_gamma, cema_omega (spec 1.5 / 2.2)."""
    V, d, N, z, v, f = cfg.vocab_size, cfg.model_dim, cfg.cema_ndim, cfg.z_dim, cfg.value_dim, cfg.ffn_hidden_dim
    s = [("embed.weight", (V, d), "embed", d)]
    for i in range(cfg.n_layers):
        a, n = f"layers.{i}.attn.", f"layers.{i}.ffn."
        s += [(a + "norm.weight", (d,), "zero", 0), (a + "norm.bias", (d,), "zero", 0),
              (a + "cema.alpha", (d, N), "cema_ad", 0), (a + "cema.delta", (d, N), "cema_ad", 0),
              (a + "cema.theta", (d,), "cema_theta", 0), (a + "cema.gamma", (d, N, 2), "cema_gamma", 0),
              (a + "cema.omega", (d,), "cema_omega", 0), (a + "rmsnorm.weight", (d,), "zero", 0),
              (a + "wz.weight", (z, d), "he", d), (a + "wz.bias", (z,), "zero", 0),
              (a + "wv.weight", (v, d), "he", d), (a + "wv.bias", (v,), "zero", 0),
              (a + "wr.weight", (v, d), "he", d), (a + "wr.bias", (v,), "zero", 0),
              (a + "wh1.weight", (d, d), "he", d), (a + "wh1.bias", (d,), "zero", 0),
              (a + "wh2.weight", (d, v), "he", v),
              (a + "qk_gamma", (2, z), "zero", 0), (a + "qk_beta", (2, z), "zero", 0),
              (n + "norm.weight", (d,), "zero", 0), (n + "norm.bias", (d,), "zero", 0),
              (n + "fc1.weight", (f, d), "he", d)]
        if cfg.swiglu:
            s.append((n + "fc3.weight", (f, d), "he", d))
        s.append((n + "fc2.weight", (d, f), "he", f))
    s += [("final_norm.weight", (d,), "zero", 0), ("final_norm.bias", (d,), "zero", 0)]
    if not cfg.share_emb:
        s.append(("lm_head.weight", (V, d), "embed", d))
    return s


def init_params(cfg, seed=0, dtype=torch.float32, perturb=0.0):
    """Random weights per spec 1.5 / 2.2. perturb > 0 adds N(0, perturb^2) to every zero-initialised
    tensor (norm offsets, biases, Q/K affine) so that parity tests exercise their gradients' paths
    with non-trivial values (with all-zero offsets, a bug like using w instead of 1 + w is invisible)."""
    g = torch.Generator().manual_seed(seed)
    d = cfg.model_dim
    out = OrderedDict()
    for name, shape, kind, fan_in in param_specs(cfg):
        t = torch.zeros(shape, dtype=torch.float64)
        if kind == "he":
            t.normal_(0.0, 1.0 / math.sqrt(3.0 * fan_in), generator=g)
        elif kind == "embed":
            _trunc_normal(t, 1.0 / math.sqrt(d), -3.0 / math.sqrt(d), 3.0 / math.sqrt(d), g)
        elif kind == "cema_ad":
            t.normal_(0.0, 0.2, generator=g)
        elif kind == "cema_theta":
            k = torch.arange(1, d + 1, dtype=torch.float64)
            freq = torch.exp(-k * math.log(d) / d)                     # d^(-k/d), log-uniform in [1/d, 1)
            freq = freq[torch.randperm(d, generator=g)]
            t.copy_(torch.log(freq) - torch.log1p(-freq))               # logit, so sigmoid(theta) = freq
        elif kind == "cema_gamma":
            t[..., 0].normal_(0.0, 1.0, generator=g)                    # imaginary part stays 0
        elif kind == "cema_omega":
            _trunc_normal(t, 0.25, -1.0, 1.0, g)
        elif kind == "zero":
            if perturb > 0:
                t.normal_(0.0, perturb, generator=g)
        else:
            raise AssertionError(kind)
        out[name] = t.to(dtype)
    return out


def _trunc_normal(t, std, lo, hi, g):
    """Normal(0, std^2) restricted to [lo, hi] by rejection (exact distribution)."""
    flat = t.view(-1)
    todo = torch.arange(flat.numel())
    while todo.numel():
        x = torch.empty(todo.numel(), dtype=t.dtype).normal_(0.0, std, generator=g)
        ok = (x >= lo) & (x <= hi)
        flat[todo[ok]] = x[ok]
        todo = todo[~ok]
    return t


# ----------------------------------------------------------------------------------------------
# TimestepNorm (spec 3)

def timestep_norm(x, weight, bias, groups, eps):
    """Causal group norm over time. Statistics of all scalars of the group up to and including t:
    mean = cummean of per-token means m_t; E[x^2] = cummean of (s_t + m_t^2) where s_t is the within-token
    (population) variance; var = E[x^2] - mean^2. That equals the block-Welford merge with fresh state
    (count 0) because every token contributes d_g scalars. Cumulative sums run in float64 so the
    difference E[x^2] - mean^2 does not cancel catastrophically in float32 at long L."""
    B, L, d = x.shape
    xg = x.view(B, L, groups, d // groups)
    m = xg.mean(-1)
    s = (xg - m.unsqueeze(-1)).pow(2).mean(-1)
    m64, s64 = m.double(), s.double()
    cnt = torch.arange(1, L + 1, dtype=torch.float64, device=x.device).view(1, L, 1)
    mu = torch.cumsum(m64, 1) / cnt
    ex2 = torch.cumsum(s64 + m64 * m64, 1) / cnt
    var = (ex2 - mu * mu).clamp_min(0.0)
    rstd = torch.rsqrt(var + eps)
    y = (xg - mu.to(x.dtype).unsqueeze(-1)) * rstd.to(x.dtype).unsqueeze(-1)
    return y.reshape(B, L, d) * (1.0 + weight) + bias


def timestep_norm_loop(x, weight, bias, groups, eps):
    """Literal spec 3.2: per token, merge its (m_t, s_t) into the running (n, mu, var) by Chan's
    block update, starting from count 0, mean 0, var 1."""
    B, L, d = x.shape
    xg = x.view(B, L, groups, d // groups)
    n = 0
    mu = torch.zeros(B, groups, dtype=x.dtype)
    var = torch.ones(B, groups, dtype=x.dtype)
    ys = []
    for t in range(L):
        m = xg[:, t].mean(-1)
        s = ((xg[:, t] - m.unsqueeze(-1)) ** 2).mean(-1)
        n += 1
        c = 1.0 / n
        delta = m - mu
        mu = mu + c * delta
        var = var + c * (s + (1.0 - c) * delta * delta - var)
        ys.append((xg[:, t] - mu.unsqueeze(-1)) / torch.sqrt(var + eps).unsqueeze(-1))
    y = torch.stack(ys, 1).reshape(B, L, d)
    return y * (1.0 + weight) + bias


# ----------------------------------------------------------------------------------------------
# CEMA (spec 2)

def cema_coeffs(alpha, delta, theta, gamma):
    """(p, log|q|, arg q, Re gamma/sqrt N, Im gamma/sqrt N), each (d, N)."""
    d, N = alpha.shape
    a = torch.sigmoid(alpha)
    dl = torch.sigmoid(delta)
    w = torch.sigmoid(theta)
    n1 = torch.arange(1, N + 1, dtype=alpha.dtype, device=alpha.device)
    ang = w.unsqueeze(1) * n1 * (2.0 * math.pi / N)               # theta_{j,n} = (n+1) 2 pi/N omega_j
    logr = torch.log1p(-a * dl)                                    # |q| = 1 - alpha delta
    scale = 1.0 / math.sqrt(N)
    return a, logr, ang, gamma[..., 0] * scale, gamma[..., 1] * scale


def cema_kernel(alpha, delta, theta, gamma, L):
    """k[j, m] = Re(sum_n p gamma q^m), m = 0..L-1, shape (d, L).

    q^m is split as q^(J b) q^i with m = J b + i, b ~ sqrt(L): the short power tables (d, N, b) and
    (d, N, L/b) cost O(d N sqrt L) transcendentals and the sum over n becomes two batched matmuls,
    so no (d, N, L) tensor is ever materialised (autograd saves only the small tables)."""
    p, logr, ang, gre, gim = cema_coeffs(alpha, delta, theta, gamma)
    b = max(1, int(math.ceil(math.sqrt(L))))
    nb = (L + b - 1) // b
    dt, dev = alpha.dtype, alpha.device
    i = torch.arange(b, dtype=dt, device=dev)
    J = torch.arange(nb, dtype=dt, device=dev) * b
    # inner: p gamma q^i
    mag = p.unsqueeze(-1) * torch.exp(logr.unsqueeze(-1) * i)
    ci, si = torch.cos(ang.unsqueeze(-1) * i), torch.sin(ang.unsqueeze(-1) * i)
    a_re = mag * (gre.unsqueeze(-1) * ci - gim.unsqueeze(-1) * si)
    a_im = mag * (gre.unsqueeze(-1) * si + gim.unsqueeze(-1) * ci)
    # outer: q^(J b)
    magJ = torch.exp(logr.unsqueeze(-1) * J)
    b_re = (magJ * torch.cos(ang.unsqueeze(-1) * J)).transpose(1, 2)
    b_im = (magJ * torch.sin(ang.unsqueeze(-1) * J)).transpose(1, 2)
    k = torch.bmm(b_re, a_re) - torch.bmm(b_im, a_im)              # (d, nb, b): Re of the product
    return k.reshape(alpha.shape[0], nb * b)[:, :L]


def cema_kernel_direct(alpha, delta, theta, gamma, L):
    """The same kernel by the definition (materialises (d, N, L)); used only by self-checks."""
    p, logr, ang, gre, gim = cema_coeffs(alpha, delta, theta, gamma)
    m = torch.arange(L, dtype=alpha.dtype)
    mag = p.unsqueeze(-1) * torch.exp(logr.unsqueeze(-1) * m)
    return (mag * (gre.unsqueeze(-1) * torch.cos(ang.unsqueeze(-1) * m)
                   - gim.unsqueeze(-1) * torch.sin(ang.unsqueeze(-1) * m))).sum(1)


def _next_pow2(n):
    return 1 << (max(1, n) - 1).bit_length()


def cema_fft(x, alpha, delta, theta, gamma, omega):
    """y = k * x (causal linear convolution along time, per channel, zero initial state) + omega x.
    x: (B, L, d). Zero-padded real FFT of size >= 2L so the circular convolution is linear."""
    B, L, d = x.shape
    k = cema_kernel(alpha, delta, theta, gamma, L)                 # (d, L)
    nfft = _next_pow2(2 * L)
    xt = x.transpose(1, 2)                                         # (B, d, L)
    yf = torch.fft.rfft(xt, n=nfft) * torch.fft.rfft(k, n=nfft)
    y = torch.fft.irfft(yf, n=nfft)[..., :L]
    return y.transpose(1, 2) + x * omega


def cema_recurrence(x, alpha, delta, theta, gamma, omega):
    """Literal spec 2.1: h_t = p x_t + q h_{t-1} (complex, kept as re/im pairs), h_{-1} = 0,
    y_t = Re(sum_n gamma_n h_{t,n}) + omega x_t."""
    B, L, d = x.shape
    p, logr, ang, gre, gim = cema_coeffs(alpha, delta, theta, gamma)
    r = torch.exp(logr)
    q_re, q_im = r * torch.cos(ang), r * torch.sin(ang)
    N = alpha.shape[1]
    h_re = torch.zeros(B, d, N, dtype=x.dtype)
    h_im = torch.zeros(B, d, N, dtype=x.dtype)
    ys = []
    for t in range(L):
        xt = x[:, t].unsqueeze(-1)                                 # (B, d, 1)
        h_re, h_im = p * xt + q_re * h_re - q_im * h_im, q_re * h_im + q_im * h_re
        ys.append((gre * h_re - gim * h_im).sum(-1) + omega * x[:, t])
    return torch.stack(ys, 1)


# ----------------------------------------------------------------------------------------------
# attention pieces (spec 1.4, 4, 5)

def rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (1.0 + weight)


def rope_angles(c, dh, base, dtype):
    """(c, dh/2) angles pos * base^(-2i/dh) for chunk-local positions 0..c-1 (float64 then cast)."""
    inv = base ** (-torch.arange(0, dh, 2, dtype=torch.float64) / dh)
    return (torch.arange(c, dtype=torch.float64).unsqueeze(1) * inv).to(dtype)


def rope(x, c, base):
    """x: (B, L, H, dh); pairs (2i, 2i+1) rotated by pos * base^(-2i/dh) with pos = t mod c."""
    B, L, H, dh = x.shape
    ang = rope_angles(c, dh, base, x.dtype)
    cos, sin = torch.cos(ang).view(1, 1, c, 1, dh // 2), torch.sin(ang).view(1, 1, c, 1, dh // 2)
    xp = x.reshape(B, L // c, c, H, dh // 2, 2)
    x0, x1 = xp[..., 0], xp[..., 1]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), -1)
    return out.reshape(B, L, H, dh)


def rope_matrix(x, c, base):
    """Same rotation through explicit per-position block-diagonal 2x2 matrices (self-checks only)."""
    B, L, H, dh = x.shape
    ang = rope_angles(c, dh, base, x.dtype)
    R = torch.zeros(c, dh, dh, dtype=x.dtype)
    for i in range(dh // 2):
        cs, sn = torch.cos(ang[:, i]), torch.sin(ang[:, i])
        R[:, 2 * i, 2 * i], R[:, 2 * i, 2 * i + 1] = cs, -sn
        R[:, 2 * i + 1, 2 * i], R[:, 2 * i + 1, 2 * i + 1] = sn, cs
    pos = torch.arange(L) % c
    return torch.einsum("lij,blhj->blhi", R[pos], x)


def chunk_attention(q, k, v, c):
    """Block-diagonal causal softmax attention, scale 1. q, k: (B, L, H, dk); v: (B, L, H, dv).
    Chunks are a batch dimension, so each chunk is one (c x c) matmul per head."""
    B, L, H, dk = q.shape
    dv = v.shape[-1]
    nc = L // c
    qc = q.reshape(B, nc, c, H, dk).permute(0, 1, 3, 2, 4)         # (B, nc, H, c, dk)
    kc = k.reshape(B, nc, c, H, dk).permute(0, 1, 3, 4, 2)         # (B, nc, H, dk, c)
    vc = v.reshape(B, nc, c, H, dv).permute(0, 1, 3, 2, 4)
    s = torch.matmul(qc, kc)
    mask = torch.ones(c, c, dtype=torch.bool, device=q.device).triu(1)
    p = torch.softmax(s.masked_fill_(mask, float("-inf")), dim=-1)  # s is not saved by matmul
    o = torch.matmul(p, vc)                                        # (B, nc, H, c, dv)
    return o.permute(0, 1, 3, 2, 4).reshape(B, L, H * dv)


def dense_block_attention(q, k, v, c):
    """The same attention over the whole sequence with one L x L mask that allows s <= t within the
    same chunk only (self-checks only)."""
    B, L, H, dk = q.shape
    t = torch.arange(L)
    allowed = (t.unsqueeze(1) >= t.unsqueeze(0)) & ((t.unsqueeze(1) // c) == (t.unsqueeze(0) // c))
    s = torch.einsum("bthk,bshk->bhts", q, k).masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, -1)
    return torch.einsum("bhts,bshv->bthv", p, v).reshape(B, L, -1)


# ----------------------------------------------------------------------------------------------
# the model

def effective_chunk(cfg, L):
    c = min(cfg.chunk_size, L)
    if L % c:
        raise ValueError(f"sequence length {L} must be < chunk_size or a multiple of it (chunk_size {cfg.chunk_size})")
    return c


def mega_layer(cfg, P, i, X, c, slow=False, acts=None):
    """One block: Y^ = X + MAGA(X); out = X + FFN(LayerNorm(Y^)) (two-hop residual, spec 1.2)."""
    a, f = f"layers.{i}.attn.", f"layers.{i}.ffn."
    B, L, d = X.shape
    H, eps = cfg.num_heads, cfg.norm_eps
    dz = cfg.z_dim // H
    tsn = timestep_norm_loop if slow else timestep_norm
    cema = cema_recurrence if slow else cema_fft
    rot = rope_matrix if slow else rope
    att = dense_block_attention if slow else chunk_attention

    Xn = tsn(X, P[a + "norm.weight"], P[a + "norm.bias"], cfg.norm_num_groups, eps)
    Xc = cema(Xn, P[a + "cema.alpha"], P[a + "cema.delta"], P[a + "cema.theta"], P[a + "cema.gamma"],
              P[a + "cema.omega"])
    M = rms_norm(Xc, P[a + "rmsnorm.weight"], eps)
    Z = F.linear(M, P[a + "wz.weight"], P[a + "wz.bias"]).view(B, L, H, dz)
    Zh = Z * torch.rsqrt(Z.pow(2).mean(-1, keepdim=True) + eps)
    qg, qb = P[a + "qk_gamma"].view(2, H, dz), P[a + "qk_beta"].view(2, H, dz)
    Q = Zh * ((1.0 + qg[0]) / math.sqrt(dz)) + qb[0]
    K = Zh * ((1.0 + qg[1]) / math.sqrt(dz)) + qb[1]
    Vv = F.silu(F.linear(Xn, P[a + "wv.weight"], P[a + "wv.bias"]))
    Rg = F.silu(F.linear(M, P[a + "wr.weight"], P[a + "wr.bias"]))
    Q, K = rot(Q, c, cfg.rope_base), rot(K, c, cfg.rope_base)
    O = att(Q, K, Vv.view(B, L, H, -1), c)
    Hh = F.linear(M, P[a + "wh1.weight"], P[a + "wh1.bias"]) + F.linear(O * Rg, P[a + "wh2.weight"])
    Yh = X + Hh
    u = F.layer_norm(Yh, (d,), 1.0 + P[f + "norm.weight"], P[f + "norm.bias"], eps)
    if cfg.swiglu:
        h = F.silu(F.linear(u, P[f + "fc1.weight"])) * F.linear(u, P[f + "fc3.weight"])
    else:
        h = F.silu(F.linear(u, P[f + "fc1.weight"]))
    out = X + F.linear(h, P[f + "fc2.weight"])
    if acts is not None:
        acts[a + "norm"], acts[a + "cema"], acts[a + "rmsnorm"] = Xn, Xc, M
        acts[a + "q"], acts[a + "k"], acts[a + "v"], acts[a + "gate"] = Q, K, Vv, Rg
        acts[a + "attn"], acts[a + "out"] = O, Yh
        acts[f"layers.{i}.out"] = out
    return out


def forward(cfg, P, tokens, slow=False, acts=None, head=True):
    """tokens (B, L) int64 -> logits (B, L, V) (or the final-norm output (B, L, d) if head=False)."""
    B, L = tokens.shape
    c = effective_chunk(cfg, L)
    X = F.embedding(tokens, P["embed.weight"])
    if cfg.scale_emb:
        X = X * math.sqrt(cfg.model_dim)
    if acts is not None:
        acts["embed"] = X
    for i in range(cfg.n_layers):
        X = mega_layer(cfg, P, i, X, c, slow=slow, acts=acts)
    tsn = timestep_norm_loop if slow else timestep_norm
    Xf = tsn(X, P["final_norm.weight"], P["final_norm.bias"], cfg.norm_num_groups, cfg.norm_eps)
    if acts is not None:
        acts["final_norm"] = Xf
    if not head:
        return Xf
    w_out = P["embed.weight"] if cfg.share_emb else P["lm_head.weight"]
    return F.linear(Xf, w_out)


class LinearCrossEntropy(torch.autograd.Function):
    """mean over targets != -1 of cross_entropy(x W^T, target), evaluated block by block of tokens.

    The gradient is formed in the forward pass (softmax - onehot, then two matmuls per block), so the
    (tokens x V) logits never exist whole and nothing of size V per token is saved: at L = 8192 and
    V = 32000 that is ~1 GiB per materialised copy. Same matmul count as autograd on the plain form.
    Used by the benchmark; the oracle (run_ref.py) uses plain autograd and the self-check compares both."""

    @staticmethod
    def forward(ctx, x, W, targets, block):
        n = x.shape[0]
        valid = targets != -1
        nvalid = max(int(valid.sum()), 1)
        tsafe = targets.clamp_min(0)
        gx = torch.empty_like(x)
        gW = torch.zeros_like(W)
        total = torch.zeros((), dtype=torch.float64)
        for s in range(0, n, block):
            e = min(n, s + block)
            xb, tb, vb = x[s:e], tsafe[s:e], valid[s:e]
            lg = torch.mm(xb, W.t())
            tl = lg.gather(1, tb.unsqueeze(1)).squeeze(1)
            mx = lg.amax(1, keepdim=True)
            lg.sub_(mx).exp_()                                         # in place: exp(logit - max)
            ssum = lg.sum(1, keepdim=True)
            lse = (mx + torch.log(ssum)).squeeze(1)
            total += ((lse - tl) * vb).double().sum()
            wrow = vb.to(lg.dtype) / nvalid                            # ignored rows get no gradient
            lg.mul_(wrow.unsqueeze(1) / ssum)                          # softmax * row weight
            lg[torch.arange(e - s), tb] -= wrow
            gx[s:e] = torch.mm(lg, W)
            gW.addmm_(lg.t(), xb)
        ctx.save_for_backward(gx, gW)
        return (total / nvalid).to(x.dtype)

    @staticmethod
    def backward(ctx, go):
        gx, gW = ctx.saved_tensors
        return gx * go, gW * go, None, None


def loss_fn(cfg, P, tokens, targets, slow=False, acts=None, return_logits=False, fused_head=False):
    """Mean cross-entropy over all targets != -1 (ignored positions are excluded from the mean).
    fused_head: use LinearCrossEntropy (benchmark path; no logits are returned)."""
    if fused_head:
        Xf = forward(cfg, P, tokens, slow=slow, acts=acts, head=False)
        w_out = P["embed.weight"] if cfg.share_emb else P["lm_head.weight"]
        block = max(1, (1 << 25) // cfg.vocab_size)
        return LinearCrossEntropy.apply(Xf.reshape(-1, Xf.shape[-1]), w_out, targets.reshape(-1).long(), block)
    logits = forward(cfg, P, tokens, slow=slow, acts=acts)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1).long(), ignore_index=-1)
    return (loss, logits) if return_logits else loss


def count_params(cfg):
    return sum(math.prod(s) for _, s, _, _ in param_specs(cfg))
