"""Fixtures of tests/test_weights_io.sh: small random checkpoints in foreign layouts, written the way
their own tools write them, with reference logits computed from those very tensors.

  llama DIR: a Hugging Face Llama directory (config.json, model.safetensors or N shards + index), the
             tensors in Hugging Face's layout (q/k rows permuted for rotate-half RoPE, norm scales gamma),
             and the logits of a Hugging Face-form forward (rotate-half RoPE on those rows, RMSNorm times
             gamma) written in float64 from the stored tensors, independently of our mapping code.
  mega PREFIX: a state dict with the official Megalodon code's names and shapes (torch.save, 2 shards),
             and the logits of tests/reference/megalodon_ref.py on the same weights.

Tokens: int32 rows x len in TOK; logits: float32 rows x len x V in LOGITS.
"""
import argparse
import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))
import llama_ref  # noqa: E402
import megalodon_ref  # noqa: E402

ST_DTYPE = {"f32": ("F32", torch.float32), "bf16": ("BF16", torch.bfloat16), "f16": ("F16", torch.float16),
            "f64": ("F64", torch.float64)}


def write_safetensors(path, tensors):
    """tensors: list of (name, torch tensor, safetensors dtype string)."""
    header, off, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name, t, dt in tensors:
        t = t.contiguous()
        if t.dtype in (torch.bfloat16, torch.float16):
            b = t.view(torch.int16).numpy().astype("<i2").tobytes()
        else:
            b = t.numpy().astype(t.numpy().dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)


def hf_forward(c, W, tokens):
    """The Hugging Face form of Llama, in float64, from Hugging Face-layout tensors W."""
    H, Hkv, d = c["num_attention_heads"], c["num_key_value_heads"], c["hidden_size"]
    dh, eps, base = d // H, c["rms_norm_eps"], c["rope_theta"]
    B, L = tokens.shape
    X = W["model.embed_tokens.weight"][tokens]

    def norm(x, g):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g

    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        xn = norm(X, W[p + "input_layernorm.weight"])
        q = F.linear(xn, W[p + "self_attn.q_proj.weight"]).view(B, L, H, dh)
        k = F.linear(xn, W[p + "self_attn.k_proj.weight"]).view(B, L, Hkv, dh)
        v = F.linear(xn, W[p + "self_attn.v_proj.weight"]).view(B, L, Hkv, dh)
        q, k = llama_ref.rope_rotate_half(q, base), llama_ref.rope_rotate_half(k, base)
        g = H // Hkv
        o = llama_ref.causal_attention(q, llama_ref.repeat_kv(k, g), llama_ref.repeat_kv(v, g))
        h = X + F.linear(o, W[p + "self_attn.o_proj.weight"])
        hn = norm(h, W[p + "post_attention_layernorm.weight"])
        X = h + F.linear(F.silu(F.linear(hn, W[p + "mlp.gate_proj.weight"])) * F.linear(hn, W[p + "mlp.up_proj.weight"]),
                         W[p + "mlp.down_proj.weight"])
    Xf = norm(X, W["model.norm.weight"])
    head = W["model.embed_tokens.weight"] if c.get("tie_word_embeddings") else W["lm_head.weight"]
    return F.linear(Xf, head)


def make_llama(a):
    c = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=32, intermediate_size=48,
             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
             max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=a.rope_theta, hidden_act="silu",
             tie_word_embeddings=a.tied, torch_dtype="float32", rope_scaling=None)
    c.update(json.loads(a.config_extra))
    ours = llama_ref.make_config(dict(arch="llama", vocab_size=256, n_layers=2, model_dim=32, num_heads=4,
                                      num_kv_heads=2, ffn_hidden_dim=48, rope_base=a.rope_theta, norm_eps=1e-5,
                                      share_emb=a.tied, seq_len=64))
    P = llama_ref.init_params(ours, seed=a.seed, perturb=0.1)
    H, Hkv = 4, 2
    W = {"model.embed_tokens.weight": P["embed.weight"]}
    for i in range(2):
        p, q = f"layers.{i}.", f"model.layers.{i}."
        W[q + "self_attn.q_proj.weight"] = llama_ref.hf_permute(P[p + "attn.wq.weight"], H)
        W[q + "self_attn.k_proj.weight"] = llama_ref.hf_permute(P[p + "attn.wk.weight"], Hkv)
        W[q + "self_attn.v_proj.weight"] = P[p + "attn.wv.weight"]
        W[q + "self_attn.o_proj.weight"] = P[p + "attn.wo.weight"]
        W[q + "mlp.gate_proj.weight"] = P[p + "ffn.fc1.weight"]
        W[q + "mlp.up_proj.weight"] = P[p + "ffn.fc3.weight"]
        W[q + "mlp.down_proj.weight"] = P[p + "ffn.fc2.weight"]
        W[q + "input_layernorm.weight"] = 1.0 + P[p + "attn_norm.weight"]
        W[q + "post_attention_layernorm.weight"] = 1.0 + P[p + "ffn_norm.weight"]
    W["model.norm.weight"] = 1.0 + P["final_norm.weight"]
    if not a.tied:
        W["lm_head.weight"] = P["lm_head.weight"]
    dt, tdt = ST_DTYPE[a.dtype]
    items = [(n, t.to(tdt), dt) for n, t in W.items() if n != a.drop]
    if a.extra:
        items.append((a.extra, torch.zeros(4), "F32"))
    if a.bad_dtype:
        items = [(n, t.to(torch.int32), "I32") if n == a.bad_dtype else (n, t, d) for n, t, d in items]
    os.makedirs(a.dir, exist_ok=True)
    with open(os.path.join(a.dir, "config.json"), "w") as f:
        json.dump(c, f, indent=2)
    if a.shards == 1:
        write_safetensors(os.path.join(a.dir, "model.safetensors"), items)
    else:
        per = math.ceil(len(items) / a.shards)
        wm = {}
        for s in range(a.shards):
            fn = f"model-{s + 1:05d}-of-{a.shards:05d}.safetensors"
            part = items[s * per:(s + 1) * per]
            write_safetensors(os.path.join(a.dir, fn), part)
            wm.update({n: fn for n, _, _ in part})
        with open(os.path.join(a.dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": 0}, "weight_map": wm}, f, indent=2)
    if a.logits == os.devnull:  # a fixture for a refusal (it may lack tensors the forward needs)
        return
    g = torch.Generator().manual_seed(a.seed + 1)
    tok = torch.randint(0, 256, (a.rows, a.len), generator=g)
    Wd = {n: t.to(torch.float64) for n, t, _ in items if t.is_floating_point()}
    with torch.no_grad():
        logits = hf_forward(c, Wd, tok)
    tok.to(torch.int32).numpy().astype("<i4").tofile(a.tokens)
    logits.to(torch.float32).numpy().astype("<f4").tofile(a.logits)


def official_state_dict(cfg, P):
    """Our canonical weights under the official Megalodon code's names and shapes (its state_dict())."""
    d, N, G = cfg.model_dim, cfg.cema_ndim, cfg.norm_num_groups
    dz = cfg.z_dim // cfg.num_heads

    def priors(prefix):
        return {prefix + "prior_count": torch.tensor(0, dtype=torch.int64), prefix + "prior_mean": torch.zeros(G),
                prefix + "prior_logv": torch.zeros(G)}

    sd = {"embed.weight": P["embed.weight"],
          "rope.freqs": 1.0 / torch.tensor([cfg.rope_base ** (j / dz) for j in range(0, dz, 2)], dtype=torch.float32)}
    for i in range(cfg.n_layers):
        p, m, n = f"layers.{i}.attn.", f"layers.{i}.mega.", f"layers.{i}.nffn."
        sd.update(priors(m + "timenorm."))
        sd[m + "timenorm.weight"], sd[m + "timenorm.bias"] = P[p + "norm.weight"], P[p + "norm.bias"]
        sd[m + "cema.alpha"] = P[p + "cema.alpha"].view(d, N, 1)
        sd[m + "cema.delta"] = P[p + "cema.delta"].view(d, N, 1)
        sd[m + "cema.theta"] = P[p + "cema.theta"].view(d, 1, 1)
        sd[m + "cema.gamma"] = P[p + "cema.gamma"]
        sd[m + "cema.omega"] = P[p + "cema.omega"].view(d, 1)
        sd[m + "rmsnorm.weight"] = P[p + "rmsnorm.weight"]
        for w in ("wv", "wz", "wr", "wh1"):
            sd[m + w + ".weight"], sd[m + w + ".bias"] = P[p + w + ".weight"], P[p + w + ".bias"]
        sd[m + "wh2.weight"] = P[p + "wh2.weight"]
        sd[m + "gamma"], sd[m + "beta"] = P[p + "qk_gamma"], P[p + "qk_beta"]
        f = f"layers.{i}.ffn."
        sd[n + "norm.weight"], sd[n + "norm.bias"] = P[f + "norm.weight"], P[f + "norm.bias"]
        for w in ("fc1", "fc2", "fc3"):
            if f + w + ".weight" in P:
                sd[n + w + ".weight"] = P[f + w + ".weight"]
    sd.update(priors("output.final_norm."))
    sd["output.final_norm.weight"], sd["output.final_norm.bias"] = P["final_norm.weight"], P["final_norm.bias"]
    sd["output.output.weight"] = P["embed.weight"] if cfg.share_emb else P["lm_head.weight"]
    return sd


def make_mega(a):
    cfg = megalodon_ref.load_config(a.conf)
    P = megalodon_ref.init_params(cfg, seed=a.seed, perturb=0.1)
    sd = official_state_dict(cfg, P)
    if a.extra:
        sd[a.extra] = torch.zeros(cfg.model_dim)
    names = list(sd)
    half = len(names) // 2
    parts = [{k: sd[k] for k in names[:half]}, {k: sd[k] for k in names[half:]}]
    if a.dup:
        parts[1][names[0]] = sd[names[0]]
    # the second shard as a training checkpoint would hold it: under "model", FSDP-wrapped names
    wrapped = {k.replace("layers.", "layers._fsdp_wrapped_module.", 1) if k.startswith("layers.") else k: v
               for k, v in parts[1].items()}
    torch.save(parts[0], a.prefix + ".part1.pt")
    torch.save({"model": wrapped}, a.prefix + ".part2.pt")
    g = torch.Generator().manual_seed(a.seed + 1)
    tok = torch.randint(0, cfg.vocab_size, (a.rows, a.len), generator=g)
    with torch.no_grad():
        logits = megalodon_ref.forward(cfg, {k: v.to(torch.float64) for k, v in P.items()}, tok)
    tok.to(torch.int32).numpy().astype("<i4").tofile(a.tokens)
    logits.to(torch.float32).numpy().astype("<f4").tofile(a.logits)


def main(argv=None):
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "batch":
        # one fixture per line of stdin (the arguments of one call, shell-quoted): torch is imported once
        import shlex
        for line in sys.stdin:
            if line.strip():
                main(shlex.split(line))
        return
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("llama", "mega"):
        s = sub.add_parser(name)
        s.add_argument("--seed", type=int, default=1)
        s.add_argument("--rows", type=int, default=2)
        s.add_argument("--len", type=int, default=16)
        s.add_argument("--tokens", default=os.devnull)
        s.add_argument("--logits", default=os.devnull)
        s.add_argument("--extra", default="", help="add an unexpected tensor of this name")
    s = sub.choices["llama"]
    s.add_argument("--dir", required=True)
    s.add_argument("--shards", type=int, default=1)
    s.add_argument("--dtype", default="f32", choices=list(ST_DTYPE))
    s.add_argument("--rope_theta", type=float, default=10000.0)
    s.add_argument("--tied", action="store_true")
    s.add_argument("--drop", default="", help="leave this tensor out")
    s.add_argument("--bad_dtype", default="", help="store this tensor as I32")
    s.add_argument("--config_extra", default="{}", help="JSON object merged into config.json")
    s = sub.choices["mega"]
    s.add_argument("--conf", required=True)
    s.add_argument("--prefix", required=True)
    s.add_argument("--dup", action="store_true", help="put one tensor into both shards")
    a = ap.parse_args(argv)
    (make_llama if a.cmd == "llama" else make_mega)(a)


if __name__ == "__main__":
    main()
