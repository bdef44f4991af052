"""An independent PyTorch implementation of the Llama-2 baseline (arch = llama), written from the Llama-2
architecture (Touvron et al. 2023, and Meta's original model code's conventions) and the choices the C
trainer documents in docs/model.md. Like megalodon_ref.py it is the model-level oracle: loss and
gradients by autograd (float64 by default) for weights and a batch given in HDF5 (run_ref.py dispatches
here when the config says `arch = llama`).

Semantics (parameters use the canonical names and shapes of src/model/llama.c):
  X = E[tokens] (* sqrt(d) with scale_emb); per layer
    h   = X + Attn(RMSNorm(X)) Wo^T,    RMSNorm(x) = x / sqrt(mean(x^2) + eps) * (1 + w)  (stored offsets)
    out = h + (silu(hn W1^T) * (hn W3^T)) W2^T,  hn = RMSNorm(h)   (fc1 = W1 gate, fc3 = W3 up, fc2 = W2 down)
  Attn: q = x Wq^T (H heads), k, v = x Wk^T, x Wv^T (Hkv heads); RoPE on q and k as complex rotations of
  the interleaved pairs (2i, 2i+1) (Meta's convention: view_as_complex), angle t * base^(-2i/dh);
  key/value head j serves query heads j*g .. j*g+g-1 (g = H/Hkv, repeat_kv); causal softmax(q k^T/sqrt(dh)) v.
  Final RMSNorm, logits = . lm_head^T (embed.weight with share_emb). Loss: mean cross-entropy over targets
  != -1. No biases, no dropout.

Forms used only by the self-checks: RoPE by rotating halves (the Hugging Face convention) applied to q/k
weights permuted the way Hugging Face's conversion permutes them (hf_permute), which must give the same
model; attention through an explicit L x L mask per head with repeated keys vs grouped einsum.
"""
import math
from collections import OrderedDict
from types import SimpleNamespace

import torch
import torch.nn.functional as F

CONFIG_DEFAULTS = dict(
    arch="llama", vocab_size=None, n_layers=None, model_dim=None, num_heads=None, num_kv_heads=0,
    ffn_hidden_dim=None, rope_base=10000.0, norm_eps=1e-5, scale_emb=False, share_emb=False, seq_len=None,
    batch_size=1,
)
_INT_KEYS = {"vocab_size", "n_layers", "model_dim", "num_heads", "num_kv_heads", "ffn_hidden_dim", "seq_len",
             "batch_size"}
_FLOAT_KEYS = {"rope_base", "norm_eps"}
_BOOL_KEYS = {"scale_emb", "share_emb"}


def _parse_bool(key, s):
    t = s.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"config key '{key}': '{s}' is not a boolean (use true/false)")


def make_config(values):
    """Config from a dict of typed or string values; keys of other architectures are ignored."""
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
    missing = [k for k in ("vocab_size", "n_layers", "model_dim", "num_heads", "ffn_hidden_dim") if cfg[k] is None]
    if missing:
        raise ValueError(f"config lacks required keys: {', '.join(missing)}")
    c = SimpleNamespace(**cfg)
    if c.arch != "llama":
        raise ValueError(f"llama_ref: arch is '{c.arch}', not llama")
    if not c.num_kv_heads:
        c.num_kv_heads = c.num_heads
    if c.model_dim % c.num_heads or (c.model_dim // c.num_heads) % 2:
        raise ValueError(f"model_dim ({c.model_dim}) / num_heads ({c.num_heads}) must be an even integer")
    if c.num_heads % c.num_kv_heads:
        raise ValueError(f"num_kv_heads ({c.num_kv_heads}) must divide num_heads ({c.num_heads})")
    return c


def read_config_values(path):
    """{key: text} of a `key = value` file (`#` comments; quotes stripped)."""
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
    return values


def load_config(path, overrides=None):
    values = read_config_values(path)
    if overrides:
        values.update({k: v for k, v in overrides.items() if v is not None})
    return make_config(values)


def model_module(path):
    """The reference module of a config file's architecture: llama_ref for `arch = llama`, else megalodon_ref."""
    if read_config_values(path).get("arch", "megalodon") == "llama":
        return __import__("llama_ref")
    return __import__("megalodon_ref")


def param_specs(cfg):
    """[(name, shape, init, fan_in)] in the canonical order of src/model/llama.c; init: zero or normal
    (std 0.02)."""
    V, d, f = cfg.vocab_size, cfg.model_dim, cfg.ffn_hidden_dim
    kv = cfg.num_kv_heads * (d // cfg.num_heads)
    s = [("embed.weight", (V, d), "normal", 0)]
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        s += [(p + "attn_norm.weight", (d,), "zero", 0),
              (p + "attn.wq.weight", (d, d), "normal", d), (p + "attn.wk.weight", (kv, d), "normal", d),
              (p + "attn.wv.weight", (kv, d), "normal", d), (p + "attn.wo.weight", (d, d), "normal", d),
              (p + "ffn_norm.weight", (d,), "zero", 0),
              (p + "ffn.fc1.weight", (f, d), "normal", d), (p + "ffn.fc3.weight", (f, d), "normal", d),
              (p + "ffn.fc2.weight", (d, f), "normal", f)]
    s.append(("final_norm.weight", (d,), "zero", 0))
    if not cfg.share_emb:
        s.append(("lm_head.weight", (V, d), "normal", d))
    return s


def init_params(cfg, seed=0, dtype=torch.float32, perturb=0.0):
    """N(0, 0.02^2) for every matrix and the embedding, zero norm offsets (scale 1). perturb > 0 adds
    N(0, perturb^2) to the norm offsets so that a parity test sees their gradients' paths."""
    g = torch.Generator().manual_seed(seed)
    out = OrderedDict()
    for name, shape, kind, _ in param_specs(cfg):
        t = torch.zeros(shape, dtype=torch.float64)
        if kind == "normal":
            t.normal_(0.0, 0.02, generator=g)
        elif perturb > 0:
            t.normal_(0.0, perturb, generator=g)
        out[name] = t.to(dtype)
    return out


def count_params(cfg):
    return sum(math.prod(s) for _, s, _, _ in param_specs(cfg))


# ----------------------------------------------------------------------------------------------
# ops

def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (1.0 + w)


def rope_freqs(L, dh, base, dtype):
    """(L, dh/2) complex e^{i t theta_j}, theta_j = base^(-2j/dh) (computed in float64)."""
    theta = base ** (-torch.arange(0, dh, 2, dtype=torch.float64) / dh)
    ang = torch.outer(torch.arange(L, dtype=torch.float64), theta)
    cplx = torch.complex64 if dtype == torch.float32 else torch.complex128
    return torch.polar(torch.ones_like(ang), ang).to(cplx)


def rope(x, base):
    """x (B, L, H, dh): pairs (2j, 2j+1) as complex numbers times e^{i t theta_j} (Meta's form)."""
    B, L, H, dh = x.shape
    xc = torch.view_as_complex(x.reshape(B, L, H, dh // 2, 2).contiguous())
    fr = rope_freqs(L, dh, base, x.dtype).view(1, L, 1, dh // 2)
    return torch.view_as_real(xc * fr).reshape(B, L, H, dh)


def rope_rotate_half(x, base):
    """The Hugging Face form: pairs (j, j + dh/2), x * cos + rotate_half(x) * sin (self-checks only)."""
    B, L, H, dh = x.shape
    theta = base ** (-torch.arange(0, dh, 2, dtype=torch.float64) / dh)
    ang = torch.outer(torch.arange(L, dtype=torch.float64), theta)
    ang = torch.cat((ang, ang), -1).to(x.dtype).view(1, L, 1, dh)
    x1, x2 = x[..., : dh // 2], x[..., dh // 2:]
    return x * torch.cos(ang) + torch.cat((-x2, x1), -1) * torch.sin(ang)


def hf_permute(w, heads):
    """The q/k row permutation of Hugging Face's Llama conversion: rows of each head reordered from
    interleaved pairs (2j, 2j+1) to halves (j, j + dh/2)."""
    out_dim, in_dim = w.shape
    return w.view(heads, out_dim // heads // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def repeat_kv(x, g):
    """(B, L, Hkv, dh) -> (B, L, Hkv*g, dh): key/value head j serves query heads j*g .. j*g + g - 1."""
    if g == 1:
        return x
    B, L, Hkv, dh = x.shape
    return x[:, :, :, None, :].expand(B, L, Hkv, g, dh).reshape(B, L, Hkv * g, dh)


def causal_attention(q, k, v):
    """q, k, v (B, L, H, dh) -> (B, L, H*dh): softmax(q k^T / sqrt(dh) + causal mask) v."""
    B, L, H, dh = q.shape
    s = torch.matmul(q.transpose(1, 2), k.permute(0, 2, 3, 1)) / math.sqrt(dh)     # (B, H, L, L)
    mask = torch.ones(L, L, dtype=torch.bool).triu(1)
    p = torch.softmax(s.masked_fill(mask, float("-inf")), -1)
    return torch.matmul(p, v.transpose(1, 2)).transpose(1, 2).reshape(B, L, H * dh)


def grouped_attention(q, k, v):
    """The same attention without repeating keys: queries grouped per key/value head (self-checks only)."""
    B, L, H, dh = q.shape
    Hkv = k.shape[2]
    qg = q.view(B, L, Hkv, H // Hkv, dh)
    s = torch.einsum("btjgd,bsjd->bjgts", qg, k) / math.sqrt(dh)
    t = torch.arange(L)
    s = s.masked_fill(t.view(L, 1) < t.view(1, L), float("-inf"))
    o = torch.einsum("bjgts,bsjd->btjgd", torch.softmax(s, -1), v)
    return o.reshape(B, L, H * dh)


# ----------------------------------------------------------------------------------------------
# the model

def llama_layer(cfg, P, i, X, hf=False, slow=False, acts=None):
    p = f"layers.{i}."
    B, L, d = X.shape
    H, Hkv = cfg.num_heads, cfg.num_kv_heads
    dh = d // H
    xn = rms_norm(X, P[p + "attn_norm.weight"], cfg.norm_eps)
    wq, wk = P[p + "attn.wq.weight"], P[p + "attn.wk.weight"]
    if hf:  # the Hugging Face layout: permuted rows, rotate-half RoPE
        wq, wk = hf_permute(wq, H), hf_permute(wk, Hkv)
    q = F.linear(xn, wq).view(B, L, H, dh)
    k = F.linear(xn, wk).view(B, L, Hkv, dh)
    v = F.linear(xn, P[p + "attn.wv.weight"]).view(B, L, Hkv, dh)
    rot = rope_rotate_half if hf else rope
    q, k = rot(q, cfg.rope_base), rot(k, cfg.rope_base)
    if slow:
        o = grouped_attention(q, k, v)
    else:
        g = H // Hkv
        o = causal_attention(q, repeat_kv(k, g), repeat_kv(v, g))
    h = X + F.linear(o, P[p + "attn.wo.weight"])
    hn = rms_norm(h, P[p + "ffn_norm.weight"], cfg.norm_eps)
    out = h + F.linear(F.silu(F.linear(hn, P[p + "ffn.fc1.weight"])) * F.linear(hn, P[p + "ffn.fc3.weight"]),
                       P[p + "ffn.fc2.weight"])
    if acts is not None:
        acts[p + "attn_norm"], acts[p + "q"], acts[p + "k"], acts[p + "v"] = xn, q, k, v
        acts[p + "attn"], acts[p + "h"], acts[p + "out"] = o, h, out
    return out


def forward(cfg, P, tokens, hf=False, slow=False, acts=None, head=True):
    """tokens (B, L) int64 -> logits (B, L, V) (or the final norm's output (B, L, d) if head=False)."""
    X = F.embedding(tokens, P["embed.weight"])
    if cfg.scale_emb:
        X = X * math.sqrt(cfg.model_dim)
    if acts is not None:
        acts["embed"] = X
    for i in range(cfg.n_layers):
        X = llama_layer(cfg, P, i, X, hf=hf, slow=slow, acts=acts)
    Xf = rms_norm(X, P["final_norm.weight"], cfg.norm_eps)
    if acts is not None:
        acts["final_norm"] = Xf
    if not head:
        return Xf
    return F.linear(Xf, P["embed.weight"] if cfg.share_emb else P["lm_head.weight"])


def loss_fn(cfg, P, tokens, targets, hf=False, slow=False, acts=None, return_logits=False, fused_head=False):
    """Mean cross-entropy over all targets != -1."""
    if fused_head:
        raise ValueError("llama_ref: fused_head is not implemented (the benchmark head is megalodon_ref's)")
    logits = forward(cfg, P, tokens, hf=hf, slow=slow, acts=acts)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1).long(), ignore_index=-1)
    return (loss, logits) if return_logits else loss
