"""`eve-ms` command line: one subcommand per user task, each implemented in the module that owns it.

Subcommand modules expose `add_arguments(parser)` and `run(args) -> int`; they are
imported only when their command runs, so `eve-ms --help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, help)
COMMANDS = {
    "demo": ("eve_ms.demo.pipeline", "run the embedded default: the whole three-stage method on a tiny model"),
    "train": ("eve_ms.training.launch", "train one stage from a yaml config (also under msrun)"),
    "plot": ("eve_ms.training.plots", "plot a training JSONL log to PNG"),
    "data": ("eve_ms.data.check", "validate a LLaVA-format dataset, or mix several by a recipe"),
    "chat": ("eve_ms.inference.chat", "chat with a checkpoint, with or without an image"),
    "eval": ("eve_ms.eval.run", "evaluate a checkpoint on a benchmark"),
    "convert": ("eve_ms.convert.cli", "convert Hugging Face / PyTorch Eve checkpoints"),
    "plan": ("eve_ms.plan.cli", "predict a run's memory and time per device from its yaml, and what makes it fit"),
}


def _build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eve-ms", description="Eve vision-language models in MindSpore")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = argv[0] if argv and argv[0] in COMMANDS else None
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == wanted:  # import only the module that will run
            importlib.import_module(module).add_arguments(p)
            p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
