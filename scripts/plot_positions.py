#!/usr/bin/python3
"""Plot validation loss against position in the context for one or more models (docs/evaluation.md).

  scripts/plot_positions.py FILE... [--out PNG] [--labels A,B,...] [--title TEXT]

Each FILE is the --out of `megalodon eval-positions`: a JSON file (its "bins", "seq_len", "arch" and
"context" are read) or a CSV file (bin_start,bin_end,mean_loss,tokens). Every file is one labelled line
of mean loss against the middle of each bin; for a JSON file a dotted vertical line marks its training
seq_len, past which a megalodon model runs recurrently on carried state. Default output: positions.png.
The file written is printed.

Errors (exit status 1) name the file: missing, not JSON/CSV of that shape, or no bin with tokens.

Python 3 standard library and matplotlib (Debian: python3-matplotlib, installed by scripts/setup.sh).
"""
import argparse
import csv
import json
import math
import os
import sys


class PlotError(Exception):
    pass


def read_result(path):
    """(x, y, meta) of one eval-positions output: bin middles, mean losses, and the JSON's other fields."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise PlotError(f"{path}: cannot read: {e.strerror}")
    rows, meta = [], {}
    if path.endswith(".csv"):
        try:
            for r in csv.DictReader(text.splitlines()):
                rows.append((int(r["bin_start"]), int(r["bin_end"]), float(r["mean_loss"]), int(r["tokens"])))
        except (KeyError, ValueError, TypeError) as e:
            raise PlotError(f"{path}: not a CSV of bin_start,bin_end,mean_loss,tokens ({e})")
    else:
        try:
            doc = json.loads(text)
            for b in doc["bins"]:
                loss = b["loss"]
                rows.append((int(b["start"]), int(b["end"]), float("nan") if loss is None else float(loss),
                             int(b["tokens"])))
        except (json.JSONDecodeError, KeyError, ValueError, TypeError) as e:
            raise PlotError(f"{path}: not the JSON of `megalodon eval-positions --out` ({e})")
        meta = {k: v for k, v in doc.items() if k != "bins"}
    pts = [((s + e) / 2.0, loss) for s, e, loss, n in rows if n > 0 and math.isfinite(loss)]
    if not pts:
        raise PlotError(f"{path}: no bin with tokens")
    return [p[0] for p in pts], [p[1] for p in pts], meta


def default_label(path, meta):
    name = os.path.splitext(os.path.basename(path))[0]
    if meta.get("arch"):
        return f"{name} ({meta['arch']}, context {meta.get('context', '?')})"
    return name


def main(argv):
    ap = argparse.ArgumentParser(description="plot loss against position from `megalodon eval-positions --out`")
    ap.add_argument("files", nargs="+", help="JSON or CSV files written by eval-positions --out")
    ap.add_argument("--out", default="positions.png", help="the PNG to write (default positions.png)")
    ap.add_argument("--labels", default=None, help="comma-separated labels, one per file")
    ap.add_argument("--title", default="validation loss by position in the context")
    args = ap.parse_args(argv)
    labels = args.labels.split(",") if args.labels else None
    if labels is not None and len(labels) != len(args.files):
        print(f"error: --labels has {len(labels)} labels for {len(args.files)} files", file=sys.stderr)
        return 1
    try:
        results = [read_result(p) for p in args.files]
    except PlotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("error: matplotlib is missing (Debian: apt-get install python3-matplotlib, or make deps)",
              file=sys.stderr)
        return 1
    fig, ax = plt.subplots(figsize=(8, 4.5))
    marks = set()
    for i, (path, (x, y, meta)) in enumerate(zip(args.files, results)):
        label = labels[i] if labels else default_label(path, meta)
        line, = ax.plot(x, y, marker="o" if len(x) <= 40 else None, markersize=3, label=label)
        sl = meta.get("seq_len")
        if isinstance(sl, int) and sl < max(x) and (sl, line.get_color()) not in marks:
            marks.add((sl, line.get_color()))
            ax.axvline(sl, color=line.get_color(), linestyle=":", linewidth=1)
    ax.set_xlabel("position in the context (tokens; dotted: training seq_len)")
    ax.set_ylabel("mean validation loss (nats/token)")
    ax.set_title(args.title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out_dir = os.path.dirname(args.out)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    plt.close(fig)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
