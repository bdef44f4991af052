#!/usr/bin/env python3
"""Latency-bandwidth (alpha-beta) cost model of the sequence-parallel state exchange of Megalodon
(docs/parallelism.md, "Measurements and the cost model"; the algorithms are those of parallel/state_scan.h). Python 3 standard
library only.

What is exchanged, per micro-batch of B sequences (fp32, B = batch_size, D = model_dim, N = cema_ndim,
G = norm_num_groups, L = n_layers):
  forward, per layer, rank r -> r+1 (the exclusive scan of the SP group):
      TimestepNorm Welford summary  B x G x 3 fp32   (count, mean, M2)
      CEMA summary                  B x D x N x 4 fp32  (complex decay a, complex state b)
    and once more the final TimestepNorm's Welford summary.
  backward, the reverse chain rank r+1 -> r, per layer and the final norm:
      TimestepNorm state gradient   B x G x 2 fp32
      CEMA state gradient           B x D x N x 2 fp32  (complex)
    The chain passes these values. The scan algorithms (all-gather, recursive doubling) cannot: they
    scan affine maps instead, CEMA (conj(a), c) = B x D x N x 4 fp32 (MG_SCAN_REVERSE) and for the norm
    a 2x2 map plus offset, B x G x 6 fp32.

Algorithms, P ranks in the SP group, summary S bytes, K pieces, one exchange with all ranks ready:
  chain                    (P-1)(alpha + S/beta)
  pipelined chain          (P+K-2)(alpha + S/(K beta))
  all-gather + local fold  ceil(log2 P) alpha + (P-1) S/beta
  recursive doubling       ceil(log2 P)(alpha + S/beta)
With mixed links (NVLink inside a node, InfiniBand between nodes) every hop of the chain pays its own
link; the all-gather and every round of recursive doubling pay the slowest link of the group.

Across layers (the "exposed" figures): the chain and the pipelined chain only ever wait for the rank
before them, so the layers form a wavefront: rank r runs layer l about one hop cost after rank r-1, and
the time the exchange adds to a forward (or backward) pass is the pipeline fill, the sum over the P-1
hops of one layer-step (both of the layer's messages on that hop, alpha + S/beta each: conservative,
the two could overlap), not P-1 hops per layer. If a hop costs more than a layer's compute, the wave
moves at the link's pace and every layer adds the difference. Backward: the reverse wave starts at the
last rank, which finishes the forward last, so a micro-batch pays the forward fill plus the backward fill.
In the wavefront a pipelined chain cannot start forwarding before its own summary exists, so its hop
costs K alpha + S/beta (pieces serialised): never less than the chain's. The all-gather is a collective
(every rank waits for every other) and recursive doubling, as implemented, waits for each round's send:
both are charged in full for every exchange of every layer (2L + 1 per pass), with no overlap.

Assumed, and not modelled: sends are nonblocking or receives posted early (a blocking rendezvous send
would make a rank wait for its successor and break the wavefront); combining a summary costs nothing;
the same MFU at every slice length (short slices would lower it); attention across slice boundaries
(ring attention for chunks that span ranks), the data-parallel gradient all-reduce and the optimizer
(the same with pure data parallelism) are left out; micro-batches run one after another (interleaving
them could hide the fill, not assumed). Compute per rank: FLOPs per token (6 x matmul parameters +
causal chunk attention, the convention of src/info.c) x tokens per rank / (peak x MFU).
"""

import argparse
import csv
import math
import os
import sys

# Link presets: (alpha in seconds, beta in bytes per second)
PRESETS = {
    "nvlink": (3e-6, 370e9),  # NVLink 4 (H100 SXM), per direction, as used by NCCL point-to-point
    "ib": (5e-6, 50e9),       # InfiniBand NDR 400 Gb/s, one NIC per GPU
}
ALGOS = ("chain", "pipelined", "allgather", "recursive-doubling")
ZECO = {8: 0.95, 256: 0.88}   # throughput kept relative to data parallelism reported for ZeCO (arXiv 2507.01004)
GOAL = {8: 0.02, 256: 0.05}   # our goal: exposed exchange at most this fraction of the step
F32 = 4


class ModelError(Exception):
    pass


# ---- configs -----------------------------------------------------------------------------------------
DEFAULTS = {"cema_ndim": 16, "swiglu": False, "share_emb": False, "batch_tokens": 0}
NEEDED = ("model_dim", "norm_num_groups", "n_layers", "seq_len", "batch_size", "vocab_size", "z_dim",
          "value_dim", "ffn_hidden_dim", "chunk_size")


def parse_config(path):
    """`key = value` lines, `#` comments; returns the keys the model needs (ints and booleans)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except OSError as e:
        raise ModelError(f"cannot read config {path}: {e.strerror}")
    raw = {}
    for n, line in enumerate(lines, 1):
        s = line.split("#", 1)[0].strip()
        if not s:
            continue
        if "=" not in s:
            raise ModelError(f"{path}:{n}: expected 'key = value', got '{s}'")
        k, v = (x.strip() for x in s.split("=", 1))
        raw[k] = v.strip('"')
    c = dict(DEFAULTS)
    for k in NEEDED + tuple(DEFAULTS):
        if k not in raw:
            if k in DEFAULTS:
                continue
            raise ModelError(f"{path}: no '{k}' (the cost model needs {', '.join(NEEDED)})")
        v = raw[k]
        if isinstance(DEFAULTS.get(k), bool):
            if v.lower() not in ("true", "false", "1", "0"):
                raise ModelError(f"{path}: {k} = {v} is not a boolean")
            c[k] = v.lower() in ("true", "1")
        else:
            try:
                c[k] = int(v)
            except ValueError:
                raise ModelError(f"{path}: {k} = {v} is not an integer")
            if c[k] < (0 if k == "batch_tokens" else 1):
                raise ModelError(f"{path}: {k} = {v} must be positive")
    if not c["batch_tokens"]:
        c["batch_tokens"] = c["batch_size"] * c["seq_len"]
    c["name"] = os.path.splitext(os.path.basename(path))[0]
    return c


def matmul_params(c):
    """Parameters used in matrix products (the LM head included, the embedding not): src/model/megalodon.c."""
    d, z, v, f = c["model_dim"], c["z_dim"], c["value_dim"], c["ffn_hidden_dim"]
    per_layer = z * d + v * d + v * d + d * d + d * v + f * d * (3 if c["swiglu"] else 2)
    return per_layer * c["n_layers"] + c["vocab_size"] * d


def flops_per_token(c, seq_len):
    """6 x matmul parameters + per layer 6 (c/2)(z+v) for causal chunk attention, c = min(chunk, seq_len)."""
    ce = min(c["chunk_size"], seq_len)
    return 6.0 * matmul_params(c) + 6.0 * (ce / 2.0) * (c["z_dim"] + c["value_dim"]) * c["n_layers"]


def summaries(c):
    """Bytes of one exchange: forward, backward as values (chains), backward as affine maps (scans)."""
    B, D, N, G = c["batch_size"], c["model_dim"], c["cema_ndim"], c["norm_num_groups"]
    return {
        "fwd": (B * G * 3 * F32, B * D * N * 4 * F32),
        "bwd_value": (B * G * 2 * F32, B * D * N * 2 * F32),
        "bwd_affine": (B * G * 6 * F32, B * D * N * 4 * F32),
    }


# ---- links ---------------------------------------------------------------------------------------------
class Links:
    """intra/inter: (alpha, beta); hops i -> i+1 of an SP group whose first rank starts a node."""

    def __init__(self, name, intra, inter, gpus_per_node):
        self.name, self.intra, self.inter, self.gpn = name, intra, inter, gpus_per_node

    def hop(self, i):
        return self.inter if (i + 1) % self.gpn == 0 else self.intra

    def hops(self, P):
        return [self.hop(i) for i in range(P - 1)]

    def slowest(self, P):
        return self.inter if P > self.gpn else self.intra

    def describe(self):
        if self.intra == self.inter:
            a, b = self.intra
            return f"every hop alpha {a * 1e6:.3g} us, beta {b / 1e9:.3g} GB/s"
        (a1, b1), (a2, b2) = self.intra, self.inter
        return (f"inside a node of {self.gpn}: alpha {a1 * 1e6:.3g} us, beta {b1 / 1e9:.3g} GB/s; between nodes: "
                f"alpha {a2 * 1e6:.3g} us, beta {b2 / 1e9:.3g} GB/s")


def cost(link, S):
    a, b = link
    return a + S / b


def log2c(P):
    return math.ceil(math.log2(P)) if P > 1 else 0


def standalone(algo, links, P, S, K):
    """One exchange of S bytes with every rank ready at once (the critical path)."""
    if P == 1:
        return 0.0
    if algo == "chain":
        return sum(cost(h, S) for h in links.hops(P))
    if algo == "pipelined":
        piece = [cost(h, S / K) for h in links.hops(P)]
        return sum(piece) + (K - 1) * max(piece)  # (P+K-2)(alpha + S/(K beta)) on uniform links
    a, b = links.slowest(P)
    if algo == "allgather":
        return log2c(P) * a + (P - 1) * S / b
    return log2c(P) * (a + S / b)


def exposed_pass(algo, links, P, L, sizes, K, t_layer):
    """Exposed exchange time of one pass (forward or backward) of L layers; sizes = (S_norm, S_cema)."""
    if P == 1:
        return 0.0
    S_norm, S_cema = sizes
    if algo in ("chain", "pipelined"):
        if algo == "chain":
            step = [cost(h, S_norm) + cost(h, S_cema) for h in links.hops(P)]
        else:
            step = [2 * K * h[0] + (S_norm + S_cema) / h[1] for h in links.hops(P)]
        fill = sum(step)
        stall = L * max(0.0, max(step) - t_layer)
        return fill + stall
    per_exchange_norm = standalone(algo, links, P, S_norm, K)
    per_exchange_cema = standalone(algo, links, P, S_cema, K)
    return L * (per_exchange_norm + per_exchange_cema) + per_exchange_norm  # + the final norm


def messages_bytes_per_layer(algo, P, K, sz):
    """Messages and bytes over the whole SP group for one layer, forward + backward (final norm excluded)."""
    if P == 1:
        return 0, 0
    fwd = sz["fwd"]
    bwd = sz["bwd_value"] if algo in ("chain", "pipelined") else sz["bwd_affine"]
    total = sum(fwd) + sum(bwd)
    if algo == "chain":
        return 4 * (P - 1), (P - 1) * total
    if algo == "pipelined":
        return 4 * K * (P - 1), (P - 1) * total
    if algo == "allgather":
        return 4 * P * (P - 1), P * (P - 1) * total
    pairs = 0
    d = 1
    while d < P:
        pairs += P - d
        d *= 2
    return 4 * pairs, pairs * total


# ---- the measured pair ----------------------------------------------------------------------------------
def read_sweep(path):
    """alpha = median half round trip of the smallest ping-pong; beta = the best bandwidth of any size (each
    size's from its median window)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise ModelError(f"cannot read --sweep {path}: {e.strerror}")
    need = {"kind", "bytes", "mean_us", "gbps", "ranks"}
    if not rows or not need <= set(rows[0]):
        raise ModelError(f"--sweep {path}: not a tp_sweep CSV (want the columns {', '.join(sorted(need))})")
    try:
        ping = [r for r in rows if r["kind"] == "pingpong"]
        bw = [r for r in rows if r["kind"] == "bandwidth"]
        if not ping or not bw:
            raise ModelError(f"--sweep {path}: no pingpong or bandwidth rows (run tp_sweep without --no-p2p)")
        small = min(ping, key=lambda r: int(r["bytes"]))
        best = max(bw, key=lambda r: float(r["gbps"]))
        alpha = float(small.get("median_us") or small["mean_us"]) * 1e-6
        beta = float(best["gbps"]) * 1e9
        scans = [dict(r, source=os.path.basename(path)) for r in rows if r["kind"] == "scan"]
        return alpha, beta, int(small["bytes"]), int(best["bytes"]), scans
    except (KeyError, ValueError) as e:
        raise ModelError(f"--sweep {path}: a row does not parse ({e})")


def read_scans(path):
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [dict(r, source=os.path.basename(path)) for r in csv.DictReader(f) if r.get("kind") == "scan"]
    except OSError as e:
        raise ModelError(f"cannot read --compare {path}: {e.strerror}")


# ---- output ----------------------------------------------------------------------------------------------
def fmt_time(s):
    if s >= 1:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} us"


def fmt_bytes(b):
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if b >= div:
            return f"{b / div:.3g} {unit}"
    return f"{b} B"


def layouts(P, gpn):
    """(SP, DP) pairs to show for P GPUs: SP = P, and SP = gpus per node with DP = P / that."""
    out = [(P, 1)]
    if P > gpn and P % gpn == 0:
        out.append((gpn, P // gpn))
    return out


def model_rows(c, links, gpus, args):
    rows = []
    peak = args.peak_tflops * 1e12 * args.mfu
    for P in gpus:
        for SP, DP in layouts(P, args.gpus_per_node):
            seq = args.tokens_per_rank * SP if args.tokens_per_rank else c["seq_len"]
            B = c["batch_size"]
            tokens_rank = B * seq / SP
            fpt = flops_per_token(c, seq)
            compute_mb = fpt * tokens_rank / peak
            seqs_per_step = max(1, c["batch_tokens"] // seq) if not args.tokens_per_rank else DP * B
            micro = max(1, math.ceil(seqs_per_step / (B * DP)))
            notes = []
            if seq % SP:
                notes.append(f"seq_len {seq} not divisible by SP {SP}")
            elif seq // SP < c["chunk_size"]:
                notes.append(f"slice {seq // SP} < chunk {c['chunk_size']}: chunks span ranks")
            sz = summaries(c)
            L = c["n_layers"]
            for algo in ALGOS:
                K = args.pieces
                t_f = exposed_pass(algo, links, SP, L, sz["fwd"], K, compute_mb / 3 / L)
                bsz = sz["bwd_value"] if algo in ("chain", "pipelined") else sz["bwd_affine"]
                t_b = exposed_pass(algo, links, SP, L, bsz, K, compute_mb * 2 / 3 / L)
                exp_mb = t_f + t_b
                msgs, nbytes = messages_bytes_per_layer(algo, SP, K, sz)
                step = micro * (compute_mb + exp_mb)
                frac = exp_mb / (compute_mb + exp_mb)
                rows.append({
                    "config": c["name"], "links": links.name, "P": P, "SP": SP, "DP": DP, "seq_len": seq,
                    "tokens_per_rank": tokens_rank, "micro_batches": micro, "algo": algo, "msgs_layer": msgs,
                    "bytes_layer": nbytes, "compute_mb_s": compute_mb, "exposed_fwd_s": t_f, "exposed_bwd_s": t_b,
                    "exposed_step_s": micro * exp_mb, "step_s": step, "exposed_frac": frac, "dp_kept": 1 - frac,
                    "notes": "; ".join(notes),
                })
    return rows


def print_table(c, links, rows, args, out):
    sz = summaries(c)
    fpt = flops_per_token(c, c["seq_len"])
    w = out.write
    w(f"\n### {c['name']}: L {c['n_layers']}, d {c['model_dim']}, N {c['cema_ndim']}, G {c['norm_num_groups']}, "
      f"B {c['batch_size']} x seq_len {c['seq_len'] if not args.tokens_per_rank else 'SP x ' + str(args.tokens_per_rank)}"
      f"; links: {links.name}\n\n")
    w(f"Per exchange: forward norm {fmt_bytes(sz['fwd'][0])}, CEMA {fmt_bytes(sz['fwd'][1])}; backward (chain) "
      f"{fmt_bytes(sz['bwd_value'][0])} + {fmt_bytes(sz['bwd_value'][1])}, (scans, affine maps) "
      f"{fmt_bytes(sz['bwd_affine'][0])} + {fmt_bytes(sz['bwd_affine'][1])}. FLOPs per token {fpt / 1e9:.3g} G "
      f"(at seq_len {c['seq_len']}); {args.peak_tflops:g} TFLOP/s x MFU {args.mfu:g}. {links.describe()}.\n\n")
    w("| GPUs | layout | B x slice | algorithm | msgs/layer | bytes/layer | exposed/step | step | exposed % "
      "| DP kept | ZeCO | goal |\n")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    for r in rows:
        P = r["P"]
        layout = f"SP {r['SP']}" + (f" x DP {r['DP']}" if r["DP"] > 1 else (" (= P)" if P > 1 else ""))
        z = ZECO.get(P)
        zs = f"{z:.0%}" if z else "-"
        g = GOAL.get(P)
        if g is None:
            gs = "-"
        else:
            gs = ("met" if r["exposed_frac"] <= g else "MISSED") + f" (<= {g:.0%})"
        tpr = f"{c['batch_size']} x {r['seq_len'] // r['SP']}" + (" !" if r["notes"] else "")
        w(f"| {P} | {layout} | {tpr} | {r['algo']} | {r['msgs_layer']} | {fmt_bytes(r['bytes_layer'])} "
          f"| {fmt_time(r['exposed_step_s'])} | {fmt_time(r['step_s'])} | {100 * r['exposed_frac']:.2f} % "
          f"| {100 * r['dp_kept']:.1f} % | {zs} | {gs} |\n")
    notes = sorted({(r["SP"], r["notes"]) for r in rows if r["notes"]})
    if notes:
        w("\n! " + "; ".join(f"SP {sp}: {n}" for sp, n in notes) +
          " (the chunk attention would need ring attention across ranks, not modelled; MFU at such slices is "
          "unlikely to hold)\n")


def print_standalone(c, links, gpus, args, out):
    S = summaries(c)["fwd"][1]
    w = out.write
    w(f"\nOne forward CEMA exchange of {c['name']} ({fmt_bytes(S)}), all ranks ready at once, i.e. without the "
      f"wavefront (links: {links.name}, K = {args.pieces}):\n\n")
    w("| SP | " + " | ".join(ALGOS) + " |\n|---|" + "---|" * len(ALGOS) + "\n")
    for P in sorted(set(gpus) | {args.gpus_per_node}):
        w(f"| {P} | " + " | ".join(fmt_time(standalone(a, links, P, S, args.pieces)) for a in ALGOS) + " |\n")


def print_compare(scans, alpha, beta, K, out):
    """Measured scan times (tp_sweep) against the uniform alpha-beta model with the measured pair."""
    w = out.write
    w(f"\nMeasured mg_state_scan (tp_sweep, per scan the slowest rank) vs the model with alpha "
      f"{alpha * 1e6:.3g} us, beta {beta / 1e9:.3g} GB/s:\n\n")
    w("| file | ranks | bytes | algorithm | measured median | measured min | model | median / model |\n"
      "|---|---|---|---|---|---|---|---|\n")
    u = Links("measured", (alpha, beta), (alpha, beta), 1 << 30)
    for r in scans:
        try:
            P, S, algo = int(r["ranks"]), int(r["bytes"]), r["algo"]
            med, mn = float(r.get("median_us") or r["mean_us"]) * 1e-6, float(r["min_us"]) * 1e-6
            k = min(K, int(r["channels"]))
        except (KeyError, ValueError):
            continue
        if algo not in ALGOS:
            continue
        m = standalone(algo, u, P, S, k)
        ratio = f"{med / m:.2g}" if m > 0 else "-"
        w(f"| {r.get('source', '')} | {P} | {S} | {algo} | {fmt_time(med)} | {fmt_time(mn)} | {fmt_time(m)} | {ratio} |\n")


def parse_list(s, what):
    try:
        v = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise ModelError(f"{what}: '{s}' is not a comma-separated list of integers")
    if not v or min(v) < 1:
        raise ModelError(f"{what}: '{s}' must list positive integers")
    return v


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    ap = argparse.ArgumentParser(
        description="Alpha-beta cost model of Megalodon's sequence-parallel state exchange (see the module "
                    "docstring for what is assumed).")
    ap.add_argument("--config", action="append", metavar="FILE",
                    help="model config (repeatable; default configs/mega1.3b.conf and configs/megalodon-7b.conf)")
    ap.add_argument("--sweep", metavar="CSV", help="a tp_sweep CSV (scripts/bench_transport.sh): adds the "
                    "'measured' link model, every hop this pair: alpha = smallest ping-pong, beta = best bandwidth")
    ap.add_argument("--compare", metavar="CSV", action="append", default=[],
                    help="tp_sweep CSVs whose scan timings to set against the model with the measured pair "
                         "(repeatable; the --sweep file's scans are always compared)")
    ap.add_argument("--links", default=None, help="link models to show, comma-separated, of: topology (NVLink "
                    "inside a node, IB between nodes), nvlink, ib, measured (needs --sweep), custom (needs "
                    "--alpha-us and --beta-gbps); default topology, plus measured with --sweep")
    ap.add_argument("--alpha-us", type=float, help="custom link latency, microseconds")
    ap.add_argument("--beta-gbps", type=float, help="custom link bandwidth, GB/s (1e9 bytes/s)")
    ap.add_argument("--gpus", default="8,64,256", help="GPU counts (default 8,64,256)")
    ap.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node over NVLink (default 8)")
    ap.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation (default 0.4)")
    ap.add_argument("--peak-tflops", type=float, default=989.4,
                    help="dense bf16 peak per GPU, TFLOP/s (default 989.4: H100 SXM, as src/info.c)")
    ap.add_argument("--pieces", type=int, default=8, help="K, pieces of the pipelined chain (default 8)")
    ap.add_argument("--tokens-per-rank", type=int, default=0, metavar="N",
                    help="instead of the config's seq_len, give every rank N tokens: seq_len = SP x N, and one "
                         "micro-batch per DP group per step (long-context scenario)")
    ap.add_argument("--csv", metavar="FILE", help="also write every modelled row to FILE")
    a = ap.parse_args(argv)
    try:
        if not 0 < a.mfu <= 1:
            raise ModelError(f"--mfu {a.mfu}: must be in (0, 1]")
        if a.peak_tflops <= 0 or a.gpus_per_node < 1 or a.pieces < 1 or a.tokens_per_rank < 0:
            raise ModelError("--peak-tflops, --gpus-per-node and --pieces must be positive, --tokens-per-rank >= 0")
        gpus = parse_list(a.gpus, "--gpus")
        configs = a.config or [os.path.join(root, "configs", "mega1.3b.conf"),
                               os.path.join(root, "configs", "megalodon-7b.conf")]
        cfgs = [parse_config(p) for p in configs]
        measured = scans = None
        if a.sweep:
            alpha, beta, nb_a, nb_b, scans = read_sweep(a.sweep)
            measured = (alpha, beta)
        names = (a.links or ("topology,measured" if a.sweep else "topology")).split(",")
        link_models = []
        for n in names:
            n = n.strip()
            if n == "topology":
                link_models.append(Links("topology (NVLink in a node, IB between)", PRESETS["nvlink"], PRESETS["ib"],
                                         a.gpus_per_node))
            elif n in PRESETS:
                link_models.append(Links(n, PRESETS[n], PRESETS[n], a.gpus_per_node))
            elif n == "measured":
                if not measured:
                    raise ModelError("--links measured needs --sweep CSV")
                link_models.append(Links("measured (this machine's pair on every hop)", measured, measured,
                                         a.gpus_per_node))
            elif n == "custom":
                if not a.alpha_us or not a.beta_gbps or a.alpha_us <= 0 or a.beta_gbps <= 0:
                    raise ModelError("--links custom needs positive --alpha-us and --beta-gbps")
                p = (a.alpha_us * 1e-6, a.beta_gbps * 1e9)
                link_models.append(Links("custom", p, p, a.gpus_per_node))
            else:
                raise ModelError(f"--links: unknown link model '{n}' (topology, nvlink, ib, measured, custom)")
        compare = list(scans or [])
        for p in a.compare:
            compare += read_scans(p)
    except ModelError as e:
        print(f"sp_cost_model: error: {e}", file=sys.stderr)
        return 2

    out = sys.stdout
    out.write("# Sequence-parallel state exchange: alpha-beta model (scripts/sp_cost_model.py)\n")
    if measured:
        out.write(f"\nMeasured pair from {a.sweep}: alpha {measured[0] * 1e6:.3g} us (ping-pong of {nb_a} B, median "
                  f"half round trip), beta {measured[1] / 1e9:.3g} GB/s (best windowed bandwidth, at {nb_b} B).\n")
    out.write(f"\nexposed/step: the exchange time not hidden behind compute, per optimizer step; step: compute + "
              f"exposed; DP kept = compute / step (pure data parallelism = 100 %). ZeCO: its reported throughput "
              f"relative to DP (95 % on 8 GPUs, 88 % on 256; end-to-end figures, ours model the exchange alone). Goal: exposed <= 2 % of the step at 8 GPUs, <= 5 % at "
              f"256. Layout SP x DP: SP ranks per sequence (contiguous, so SP 8 is one node), DP groups.\n")
    all_rows = []
    for links in link_models:
        for c in cfgs:
            rows = model_rows(c, links, gpus, a)
            all_rows += rows
            print_table(c, links, rows, a, out)
        for c in cfgs[:1]:
            print_standalone(c, links, gpus, a, out)
    if compare and measured:
        print_compare(compare, measured[0], measured[1], a.pieces, out)
    if a.csv:
        try:
            with open(a.csv, "w", newline="", encoding="utf-8") as f:
                wr = csv.DictWriter(f, fieldnames=list(all_rows[0]))
                wr.writeheader()
                wr.writerows(all_rows)
        except OSError as e:
            print(f"sp_cost_model: error: cannot write --csv {a.csv}: {e.strerror}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # e.g. piped into head
        sys.stderr.close()
        sys.exit(0)
