"""The demo's report: the claims checked, one table, report.json, report.md and PNG plots."""
from __future__ import annotations

import json
import os

LABELS = {
    "stage0": "stage 0 (LLM pretrain)",
    "stage1": "stage 1 (adapter)",
    "stage2": "stage 2 (adapter + LoRA, merged)",
    "stage3": "stage 3 EVF, Img-GBPR",
    "stage3_random": "stage 3 EVF, Random",
    "stage3_gbpr": "stage 3 EVF, GBPR",
    "stage3_moe": "stage 3 MoE x2top1 (ablation)",
}
CLAIM_MARGIN = 0.20  # stage-3 VQA accuracy must beat chance by 20 points


def check_claims(summary: dict) -> dict:
    """The acceptance claims, each True/False as measured."""
    results, chance = summary["results"], summary["vqa_chance"]
    stage3 = results["stage3"]["vqa"]["accuracy"]
    return {
        "stage3_vqa_20_points_above_chance": stage3 >= chance + CLAIM_MARGIN,
        "stage3_vqa_above_stage1": stage3 > results["stage1"]["vqa"]["accuracy"],
        "language_only_bit_identical_to_stage2": summary["language_only_bit_identity"]["bit_identical"],
    }


def _fmt(value, digits=3):
    return "-" if value is None else f"{value:.{digits}f}"


def rows(summary: dict) -> list[list[str]]:
    out = []
    for name, result in summary["results"].items():
        vqa = result.get("vqa", {})
        language = result.get("language", {})
        routing = vqa.get("routing", {}).get("layers", [])
        success = " ".join(f"{layer['success_rate']:.2f}" for layer in routing) or "-"
        by_type = " ".join(f"{t} {a:.2f}" for t, a in vqa.get("by_type", {}).items()) or "-"
        out.append([LABELS.get(name, name), _fmt(vqa.get("accuracy")), _fmt(summary["vqa_chance"]) if vqa else "-",
                    _fmt(language.get("accuracy")), _fmt(language.get("loss")), success, by_type])
    return out


HEADER = ["run", "VQA acc", "VQA chance", "language acc", "language loss", "token success rate per EVF layer",
          "VQA acc by question type"]


def table(summary: dict) -> str:
    body = rows(summary)
    widths = [max(len(HEADER[i]), *(len(r[i]) for r in body)) for i in range(len(HEADER))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    lines = [line(HEADER), line(["-" * w for w in widths])] + [line(r) for r in body]
    identity = summary["language_only_bit_identity"]
    language_chance = next((r["language"]["chance"] for r in summary["results"].values() if "language" in r), None)
    lines += [
        "",
        f"VQA chance level: {summary['vqa_chance']:.3f}; language chance level: {_fmt(language_chance)}",
        f"language-only logits, stage 3 EVF vs stage 2 (LoRA merged): "
        f"{'bit-identical' if identity['bit_identical'] else 'DIFFERENT'} over {identity['tokens']} tokens "
        f"(max |diff| {identity['max_abs_diff']:.3g})",
        "claims: " + ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in summary["claims"].items()),
    ]
    if summary.get("total_seconds") is not None:
        lines.append(f"total time: {summary['total_seconds']:.0f} s")
    return "\n".join(lines)


def markdown(summary: dict) -> str:
    body = rows(summary)
    md = ["# eve-ms demo report", "", f"Mode: {summary['mode']}, seed {summary['seed']}.", "",
          "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    md += ["| " + " | ".join(r) + " |" for r in body]
    md += ["", "```", table(summary).split("\n\n", 1)[1], "```", "",
           "Plots: `plots/loss_per_stage.png`, `plots/token_success_rate.png`, `plots/accuracy_per_stage.png`."]
    return "\n".join(md) + "\n"


def write_reports(summary: dict, out_dir: str) -> None:
    with open(os.path.join(out_dir, "report.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=1)
    with open(os.path.join(out_dir, "report.md"), "w", encoding="utf-8") as fh:
        fh.write(markdown(summary))
    plot_all(summary, out_dir)


def plot_all(summary: dict, out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from eve_ms.training.metrics import read_log

    plots = os.path.join(out_dir, "plots")
    os.makedirs(plots, exist_ok=True)
    written = []

    fig, ax = plt.subplots(figsize=(7, 4))
    for name in summary["train_seconds"]:
        log_path = os.path.join(out_dir, name, "train_log.jsonl")
        if os.path.exists(log_path):
            records = read_log(log_path)
            ax.plot([r["step"] for r in records], [r["loss"] for r in records], label=LABELS.get(name, name))
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.set_title("loss per stage")
    written.append(_save(fig, plots, "loss_per_stage.png"))

    strategies = {n: r["vqa"]["routing"]["layers"] for n, r in summary["results"].items()
                  if "routing" in r.get("vqa", {})}
    if strategies:
        fig, ax = plt.subplots(figsize=(7, 4))
        width = 0.8 / len(strategies)
        for k, (name, layers) in enumerate(strategies.items()):
            xs = [i + k * width for i in range(len(layers))]
            ax.bar(xs, [layer["success_rate"] for layer in layers], width, label=LABELS.get(name, name))
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(next(iter(strategies.values()))))])
        ax.set_xticklabels([f"EVF layer {i}" for i in range(len(next(iter(strategies.values()))))])
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("token success rate (kept / valid)")
        ax.legend(fontsize=7)
        ax.set_title("token success rate per EVF layer (VQA evaluation)")
        written.append(_save(fig, plots, "token_success_rate.png"))

    names = [n for n, r in summary["results"].items() if "vqa" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(range(len(names)), [summary["results"][n]["vqa"]["accuracy"] for n in names])
    ax.axhline(summary["vqa_chance"], color="grey", linestyle="--", label="chance")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([LABELS.get(n, n) for n in names], rotation=20, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("VQA accuracy (exact match)")
    ax.legend()
    ax.set_title("VQA accuracy per stage")
    written.append(_save(fig, plots, "accuracy_per_stage.png"))
    return written


def _save(fig, folder: str, name: str) -> str:
    path = os.path.join(folder, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
