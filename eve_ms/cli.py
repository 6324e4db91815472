"""`eve-ms` command line: one subcommand per user task, each implemented in the module that owns it.

Subcommand modules expose `add_arguments(parser)` and `run(args) -> int`; they are
imported only when their command runs, so `eve-ms --help` stays fast.

Errors: every command's expected failures (`eve_ms.errors`) are turned into one line on stderr
here, in one place: exit status 2 for usage/config errors, 1 for runtime ones; `--debug` (or
EVE_MS_DEBUG=1) prints the traceback too. Start-up: framework logs go to a cache folder (a
training run moves them under its output_dir) and known-harmless framework warnings are
silenced unless `--verbose` (or EVE_MS_VERBOSE=1) is given (see `eve_ms.quiet`).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

# command -> (module, help)
COMMANDS = {
    "demo": ("eve_ms.demo.pipeline", "run the embedded default: the whole three-stage method on a tiny model"),
    "train": ("eve_ms.training.launch", "train one stage from a yaml config (also under msrun)"),
    "plot": ("eve_ms.training.plots", "plot a training JSONL log to PNG"),
    "data": ("eve_ms.data.command", "validate a LLaVA-format dataset, or mix several by a recipe"),
    "chat": ("eve_ms.inference.chat", "chat with a checkpoint, with or without an image"),
    "serve": ("eve_ms.serve.command", "serve a checkpoint over an OpenAI-compatible HTTP API, with a chat page"),
    "eval": ("eve_ms.eval.run", "evaluate a checkpoint on a benchmark"),
    "convert": ("eve_ms.convert.cli", "convert Hugging Face / PyTorch Eve checkpoints"),
    "plan": ("eve_ms.plan.cli", "predict a run's memory and time per device from its yaml, and what makes it fit"),
}


GLOBAL_FLAGS = {
    "--debug": "print the traceback of an error (also EVE_MS_DEBUG=1)",
    "--verbose": "show the frameworks' start-up warnings and logs (also EVE_MS_VERBOSE=1)",
}


def _add_global_flags(parser: argparse.ArgumentParser) -> None:
    """--debug / --verbose on every leaf parser (nested sub-commands included) that does not define them itself."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for action in subs:
        for child in set(action.choices.values()):
            _add_global_flags(child)
    if subs:
        return
    for flag, help_text in GLOBAL_FLAGS.items():
        if flag not in parser._option_string_actions:
            parser.add_argument(flag, action="store_true", help=help_text)


def _flag(argv: list[str], flag: str, env: str) -> bool:
    return flag in argv or os.environ.get(env, "") not in ("", "0")


def _build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eve-ms", description="Eve vision-language models in MindSpore")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = argv[0] if argv and argv[0] in COMMANDS else None
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == wanted:  # import only the module that will run
            importlib.import_module(module).add_arguments(p)
            p.set_defaults(_module=module)
            _add_global_flags(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = _flag(argv, "--debug", "EVE_MS_DEBUG")
    from eve_ms import quiet

    quiet.start_up(verbose=_flag(argv, "--verbose", "EVE_MS_VERBOSE"))
    parser = _build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except KeyboardInterrupt:
        print(f"eve-ms {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - expected errors become one line; bugs keep their traceback
        return report_error(err, _command_name(args), debug)


def _command_name(args: argparse.Namespace) -> str:
    action = getattr(args, "data_action", None) or getattr(args, "conversion", None)
    return f"{args.command} {action}" if action else args.command


def report_error(err: BaseException, command: str, debug: bool = False) -> int:
    """Print an expected error as one line on stderr (with its traceback under --debug); its exit status.

    An unexpected exception (a bug) is re-raised, so its traceback reaches the user and the report.
    """
    from eve_ms.errors import exit_code_of, one_line

    code = exit_code_of(err)
    if code is None:
        raise err
    if debug:
        traceback.print_exception(err, file=sys.stderr)
    print(f"eve-ms {command}: error: {one_line(err)}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
