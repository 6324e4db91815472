"""`eve-ms plot LOG.jsonl [--out DIR]`: PNG curves of a training log.

One PNG per quantity the log has: loss.png, aux_loss.png, lr.png, grad_norm.png,
tokens_per_s.png, and token_success_rate.png with one line per EVF layer. Steps whose value
is not a finite number (a broken step's "nan") are left out of the curve.
"""
from __future__ import annotations

import math
import os
import sys

from eve_ms.training.metrics import read_log

CURVES = {
    "loss": "loss (per target token)",
    "aux_loss": "aux loss",
    "lr": "learning rate",
    "grad_norm": "gradient norm (before clipping)",
    "tokens_per_s": "tokens / s",
}


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def plot_log(log_path: str, out_dir: str | None = None) -> list[str]:
    """Write the PNGs of `log_path` into `out_dir` (default: a `plots` folder beside the log); returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    if not records:
        raise ValueError(f"{log_path}: no records to plot")
    out_dir = out_dir or os.path.join(os.path.dirname(os.path.abspath(log_path)), "plots")
    os.makedirs(out_dir, exist_ok=True)
    written = []

    def save(fig, name):
        path = os.path.join(out_dir, name)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    for key, label in CURVES.items():
        points = [(r["step"], r[key]) for r in records if _finite(r.get(key))]
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(*zip(*points), linewidth=1.2)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        save(fig, f"{key}.png")

    layers = sorted({name for r in records for name in (r.get("token_success_rate") or {})}, key=_layer_order)
    if layers:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for name in layers:
            points = [(r["step"], r["token_success_rate"][name]) for r in records
                      if _finite((r.get("token_success_rate") or {}).get(name))]
            if points:
                ax.plot(*zip(*points), linewidth=1.2, label=name)
        ax.set_xlabel("step")
        ax.set_ylabel("EVF token success rate")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
        save(fig, "token_success_rate.png")
    return written


def _layer_order(name: str):
    digits = "".join(c for c in name if c.isdigit())
    return (int(digits) if digits else -1, name)


def add_arguments(parser) -> None:
    parser.add_argument("log", help="train_log.jsonl written by `eve-ms train`")
    parser.add_argument("--out", default=None, help="folder for the PNGs (default: plots/ beside the log)")


def run(args) -> int:
    try:
        paths = plot_log(args.log, args.out)
    except (OSError, ValueError) as err:
        print(f"eve-ms plot: error: {err}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0
