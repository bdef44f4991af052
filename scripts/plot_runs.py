#!/usr/bin/python3
"""Plot the log.jsonl of one or more training runs as PNG curves (docs/training.md, "Plotting runs").

  scripts/plot_runs.py RUN_DIR... [--out DIR] [--x step|tokens] [--smooth N] [--skip-bad]

A RUN_DIR is a `megalodon train` out_dir (its log.jsonl is read) or a log.jsonl file itself. Writes one
PNG per quantity, every run one labelled line (the label is the run directory's name):

  train_loss.png    training loss of each step ("loss")
  val_loss.png      validation loss on validation steps ("val_loss")
  lr.png            learning rate of each step ("lr")
  grad_norm.png     global gradient L2 norm before clipping ("grad_norm"; log scale
                    when it spans more than a factor 20)
  tokens_per_s.png  throughput of each step ("tokens_per_s")
  overview.png      all of the above as subplots

A quantity no run logged is skipped with a note. Default output directory: RUN_DIR/plots for one run,
./plots for several. Every file written is printed.

Errors (exit status 1): a missing log, a line that is not a JSON object with an integer "step", a field
that is neither a number nor null. They name the file and line. A last line cut short (a run killed
while writing it) is skipped with a warning; --skip-bad skips every bad line with a warning instead (a
resumed run keeps, mid-file, a line cut short before its step was written).

Python 3 standard library and matplotlib (Debian: python3-matplotlib, installed by scripts/setup.sh).
"""
import argparse
import json
import math
import os
import sys

# quantity key in log.jsonl, output name, axis / title text, log scale on y (when the values span more
# than a factor 20), drawn with markers, smoothed by --smooth
QUANTITIES = [
    ("loss", "train_loss", "training loss", False, False, True),
    ("val_loss", "val_loss", "validation loss", False, True, False),
    ("lr", "lr", "learning rate", False, False, False),
    ("grad_norm", "grad_norm", "gradient norm before clipping", True, False, True),
    ("tokens_per_s", "tokens_per_s", "tokens/s", False, False, True),
]
X_LABELS = {"step": "step", "tokens": "tokens trained on"}


class PlotError(Exception):
    pass


def warn(msg):
    print("warning: " + msg, file=sys.stderr)


def log_path(run):
    """The log.jsonl of a run directory, or the file itself."""
    if os.path.isdir(run):
        return os.path.join(run, "log.jsonl")
    return run


def run_label(run):
    """The run directory's name ("runs/small/" -> "small"; "runs/small/log.jsonl" -> "small")."""
    path = os.path.abspath(run)
    if not os.path.isdir(run):
        path = os.path.dirname(path)
    return os.path.basename(path) or path


def unique_labels(runs):
    """Directory names, or the paths as given where two runs share a name."""
    labels = [run_label(r) for r in runs]
    return [os.path.normpath(r) if labels.count(lab) > 1 else lab for r, lab in zip(runs, labels)]


def default_out(runs):
    """RUN_DIR/plots for one run (the directory of a log file given), ./plots for several."""
    if len(runs) > 1:
        return "plots"
    run = runs[0] if os.path.isdir(runs[0]) else os.path.dirname(runs[0]) or "."
    return os.path.join(run, "plots")


def refuse_constant(name):
    raise ValueError(f"{name} is not JSON (the trainer writes null)")


def parse_record(text):
    """One line -> dict, or raise ValueError saying what is wrong."""
    try:
        rec = json.loads(text, parse_constant=refuse_constant)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(rec, dict):
        raise ValueError(f"not a JSON object but {type(rec).__name__}")
    step = rec.get("step")
    if type(step) is not int and not (type(step) is float and step.is_integer()):
        raise ValueError("no integer \"step\" field" if step is None else f"\"step\" is not an integer: {step!r}")
    rec["step"] = int(step)
    for key in ["tokens"] + [q[0] for q in QUANTITIES]:
        v = rec.get(key)
        if v is not None and (type(v) is bool or not isinstance(v, (int, float))):
            raise ValueError(f"\"{key}\" is neither a number nor null: {v!r}")
    return rec


def read_log(path, skip_bad):
    """The records of one log.jsonl, one per step (the last line of a step counts), in step order."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise PlotError(f"cannot read {path}: {e.strerror}") from None
    with f:
        lines = f.read().split(b"\n")
    # "a\nb\n" splits into ["a", "b", ""]: a last element that is not empty is a line without its newline
    unterminated = lines[-1] != b""
    if not unterminated:
        lines.pop()
    by_step, repeated = {}, 0
    for i, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            rec = parse_record(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            why = "not UTF-8" if isinstance(e, UnicodeDecodeError) else str(e)
            if i == len(lines) and unterminated:
                warn(f"{path}:{i}: skipping the last line, cut short (a run killed while writing it?): {why}")
                continue
            if skip_bad:
                warn(f"{path}:{i}: skipping a bad line: {why}")
                continue
            raise PlotError(f"{path}:{i}: {why}\n  line: {raw[:200].decode('utf-8', 'replace')}\n"
                            "  (--skip-bad skips such lines with a warning)") from None
        if rec["step"] in by_step:
            repeated += 1
        by_step[rec["step"]] = rec
    if repeated:
        print(f"note: {path}: {repeated} steps logged more than once; the last line of each counts")
    return [by_step[s] for s in sorted(by_step)]


def smooth(values, n):
    """Trailing mean over the last n points (missing values left out), so a point never looks ahead."""
    if n <= 1:
        return values
    out = []
    for i in range(len(values)):
        window = [v for v in values[max(0, i - n + 1):i + 1] if not math.isnan(v)]
        out.append(sum(window) / len(window) if window else math.nan)
    return out


def series(records, key, xkey):
    """(x, y) of the records that logged `key`; a null value (not finite) is a gap (NaN)."""
    xs, ys = [], []
    for r in records:
        if key not in r or r.get(xkey) is None:
            continue
        v = r[key]
        xs.append(r[xkey])
        ys.append(math.nan if v is None or not math.isfinite(v) else float(v))
    return xs, ys


def draw(ax, runs, quantity, xkey, n_smooth, colors):
    key, _, title, logy, markers, smoothed = quantity
    for (label, records), color in zip(runs, colors):
        xs, ys = series(records, key, xkey)
        if not xs:
            continue
        style = dict(marker="o", markersize=3) if markers or len(xs) == 1 else {}
        if smoothed and n_smooth > 1:
            ax.plot(xs, ys, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(xs, smooth(ys, n_smooth), color=color, label=label, linewidth=1.4, **style)
        else:
            ax.plot(xs, ys, color=color, label=label, linewidth=1.4, **style)
    finite = [y for _, recs in runs for y in series(recs, key, xkey)[1] if not math.isnan(y)]
    if logy and finite and min(finite) > 0 and max(finite) > 20 * min(finite):  # spikes
        ax.set_yscale("log")
    ax.set_title(title + (f" (mean of {n_smooth} steps)" if smoothed and n_smooth > 1 else ""), fontsize=10)
    ax.set_xlabel(X_LABELS[xkey])
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def main(argv):
    ap = argparse.ArgumentParser(
        description="Plot log.jsonl of training runs as PNG curves (training and validation loss, "
                    "learning rate, gradient norm, tokens/s, and an overview).")
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR", help="a train out_dir (or its log.jsonl)")
    ap.add_argument("--out", metavar="DIR",
                    help="output directory (default: RUN_DIR/plots for one run, ./plots for several)")
    ap.add_argument("--x", choices=["step", "tokens"], default="step", help="x axis (default: step)")
    ap.add_argument("--smooth", type=int, default=1, metavar="N",
                    help="also draw the trailing mean of N steps of training loss, gradient norm and "
                         "tokens/s (default 1: raw values only)")
    ap.add_argument("--skip-bad", action="store_true",
                    help="skip lines that are not log records, with a warning, instead of failing")
    args = ap.parse_args(argv)
    if args.smooth < 1:
        ap.error(f"--smooth must be at least 1, not {args.smooth}")

    labels = unique_labels(args.runs)
    runs = []
    try:
        for run, label in zip(args.runs, labels):
            records = read_log(log_path(run), args.skip_bad)
            if args.x == "tokens" and records and not any("tokens" in r for r in records):
                print(f"note: {log_path(run)} has no \"tokens\" field: run {label} left out of plots over tokens")
                records = []
            elif not records:
                print(f"note: {log_path(run)} holds no records: run {label} has no curves")
            runs.append((label, records))
    except PlotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    present = [q for q in QUANTITIES
               if any(not math.isnan(y) for _, recs in runs for y in series(recs, q[0], args.x)[1])]
    for q in QUANTITIES:
        if q not in present:
            print(f"note: no run logged {q[0]} ({q[2]}): {q[1]}.png not written")
    if not present:
        print("error: nothing to plot", file=sys.stderr)
        return 1

    try:  # after reading the logs: a bad log is reported the same with or without matplotlib
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        print(f"error: {e}: install python3-matplotlib (scripts/setup.sh, make deps), or run this script "
              "with a Python 3 that has matplotlib", file=sys.stderr)
        return 1
    out = args.out or default_out(args.runs)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        print(f"error: cannot create the output directory {out}: {e.strerror}", file=sys.stderr)
        return 1
    try:
        write_plots(plt, runs, present, out, args)
    except PlotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def write_plots(plt, runs, present, out, args):
    """One PNG per quantity in `present` and overview.png, into out; prints each file written."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = [cycle[i % len(cycle)] for i in range(len(runs))]

    def save(fig, name):
        path = os.path.join(out, name)
        try:
            fig.savefig(path, dpi=100)
        except OSError as e:
            raise PlotError(f"cannot write {path}: {e.strerror or e}") from None
        plt.close(fig)
        print(f"wrote {path}")

    for q in present:
        fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
        draw(ax, runs, q, args.x, args.smooth, colors)
        ax.set_ylabel(q[2])
        save(fig, q[1] + ".png")

    ncols = 1 if len(present) == 1 else 2
    nrows = (len(present) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(6 * ncols, 3.6 * nrows), layout="constrained", squeeze=False)
    for ax, q in zip(axes.flat, present):
        draw(ax, runs, q, args.x, args.smooth, colors)
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    fig.suptitle(", ".join(label for label, _ in runs))
    save(fig, "overview.png")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
