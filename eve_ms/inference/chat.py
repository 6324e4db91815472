"""`eve-ms chat`: talk to a checkpoint, with or without an image, the answer streamed as it is generated.

    eve-ms chat --checkpoint DIR [--image PATH] --prompt TEXT     one answer, then exit
    eve-ms chat --checkpoint DIR [--image PATH]                   an interactive conversation

The prompt goes through the checkpoint's tokenizer and the `v1` template, ending where the
assistant's reply starts, as in training. With an image the model runs multimodal; without one
its EVF layers run language-only (exactly the stage-2 LLM), or always with --language-only.

Interactive: each line read from stdin is a user turn; the conversation keeps its history
(its oldest rounds are dropped when it no longer fits the model). Commands: `/image PATH`
starts a new conversation about that image, `/reset` starts a new one (keeping the image),
`/quit` (or end of input) leaves. Answers go to stdout, everything else to stderr.

A bad checkpoint, a missing or unreadable image and other bad input print one line on stderr:
the command exits with status 2, the interactive loop goes on.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys

from eve_ms.data.report import DataError
from eve_ms.data.templates import TEMPLATES, Turn

EXIT_BAD_INPUT = 2
GRAPH_LENGTH_BUCKET = 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="eve-ms checkpoint folder (with its tokenizer/)")
    parser.add_argument("--image", default=None, help="image file the conversation is about")
    parser.add_argument("--prompt", default=None, help="answer this one prompt and exit (default: interactive)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="longest answer, in tokens")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy decoding")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = all)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (reproducible answers)")
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT",
                        help="stop the answer before this text (repeatable)")
    parser.add_argument("--language-only", action="store_true",
                        help="run EVF layers language-only even with an image")
    parser.add_argument("--template", default="v1", choices=sorted(TEMPLATES), help="conversation template")
    parser.add_argument("--device-target", default=None,
                        help="CPU | GPU | Ascend (default: $EVE_DEVICE_TARGET, else CPU)")
    parser.add_argument("--exec-mode", default="pynative", choices=["pynative", "graph"],
                        help="MindSpore execution mode (graph compiles each new shape once)")


def load_for_generation(checkpoint: str, device_target, exec_mode: str, command: str):
    """(model, config, tokenizer) of a merged checkpoint, on `device_target` in `exec_mode`, for `chat` and `serve`.

    stdout carries answers only: libraries that log to stdout while they load log to stderr."""
    from eve_ms.config import ConfigError

    with contextlib.redirect_stdout(sys.stderr):
        from eve_ms.runtime import setup_context

        setup_context(device_target, exec_mode)
        from eve_ms.checkpoint_dir import load_eve_checkpoint

        model, config, tokenizer = load_eve_checkpoint(checkpoint)
    if tokenizer is None:
        raise ConfigError(f"{checkpoint} has no tokenizer/ folder; {command} needs the checkpoint's tokenizer")
    return model, config, tokenizer


def _error(message: str) -> int:
    print(f"eve-ms chat: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


class ChatSession:
    """A conversation with one model: its history, its image, and the answer to the next user turn."""

    def __init__(self, generator, config, template: str, generation, language_only: bool | None = None):
        from eve_ms.inference.inputs import image_processor_for

        self.generator, self.config, self.template, self.generation = generator, config, template, generation
        self.language_only = language_only  # None: automatic (language-only without an image)
        self.processor = image_processor_for(config)
        self.pixels = None
        self.history: list[Turn] = []

    def set_image(self, path: str | None) -> None:
        """Load the image (a DataError names a missing or unreadable file) and start a new conversation."""
        from eve_ms.inference.inputs import load_pixels

        self.pixels = load_pixels(self.processor, path)
        self.history = []

    def _prompt_ids(self, turns: list[Turn]):
        from eve_ms.inference.inputs import chat_prompt_ids

        return chat_prompt_ids(self.generator.tokenizer, self.config, turns, self.template)

    def _fitting_prompt(self, text: str):
        """(turns, token ids, generation): history + the new turn, the oldest rounds dropped while there is no
        room to answer; when the new turn alone leaves less room than --max-new-tokens, the answer's budget is
        what is left of the model's context (with a note on stderr)."""
        positions = self.config.llm.max_position_embeddings
        room = positions - self.generation.max_new_tokens
        history = list(self.history)
        while True:
            turns = [*history, Turn("human", text)]
            turns[0] = Turn("human", turns[0].text, self.pixels is not None)  # the image opens the conversation
            ids = self._prompt_ids(turns)
            if len(ids) <= room or not history:
                break
            history = history[2:]
        generation = self.generation
        if len(ids) > room:
            if len(ids) >= positions:
                raise ValueError(f"the prompt takes {len(ids)} tokens, the model's context {positions}: "
                                 "shorten the prompt")
            generation = dataclasses.replace(generation, max_new_tokens=positions - len(ids))
            print(f"note: the prompt takes {len(ids)} of the model's {positions} positions; answering with at most "
                  f"{generation.max_new_tokens} new tokens instead of --max-new-tokens "
                  f"{self.generation.max_new_tokens}", file=sys.stderr)
        self.history = history
        return turns, ids, generation

    def answer(self, text: str, write) -> str:
        """Generate the reply to `text`, handing each new piece to `write`; the reply joins the history."""
        turns, ids, generation = self._fitting_prompt(text)
        output = self.generator.generate(
            [ids], [self.pixels], generation, language_only=self.language_only,
            stream=lambda _, piece: write(piece),
        )[0]
        self.history = turns + [Turn("gpt", output.text)]
        return output.text


def run(args: argparse.Namespace) -> int:
    from eve_ms.checkpoint_dir import check_not_lora, read_eve_config
    from eve_ms.config import ConfigError
    from eve_ms.inference.sampling import GenerationConfig

    try:
        generation = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                      top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                                      stop_strings=tuple(args.stop))
        config = read_eve_config(args.checkpoint)
        check_not_lora(args.checkpoint)
        if args.image is not None:  # check the image before the slow part
            from eve_ms.inference.inputs import image_processor_for, load_pixels

            load_pixels(image_processor_for(config), args.image)
    except (ConfigError, DataError, ValueError, OSError) as err:
        return _error(str(err))

    try:
        model, config, tokenizer = load_for_generation(args.checkpoint, args.device_target, args.exec_mode, "chat")
    except (ConfigError, ValueError, OSError) as err:
        return _error(str(err))
    from eve_ms.inference.generate import Generator

    # graph mode compiles a graph per shape: pad prompts and caches to multiples of GRAPH_LENGTH_BUCKET
    bucket = GRAPH_LENGTH_BUCKET if args.exec_mode == "graph" else 1
    session = ChatSession(Generator(model, tokenizer, length_bucket=bucket), config, args.template, generation,
                          language_only=True if args.language_only else None)
    try:
        session.set_image(args.image)
    except (DataError, ValueError) as err:
        return _error(str(err))

    def write(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    if args.prompt is not None:
        try:
            session.answer(args.prompt, write)
        except ValueError as err:
            return _error(str(err))
        write("\n")
        return 0
    return _interactive(session, write)


def _interactive(session: ChatSession, write) -> int:
    image_note = "about the image" if session.pixels is not None else "without an image"
    print(f"Chat {image_note}. Commands: /image PATH, /reset, /quit.", file=sys.stderr)
    while True:
        print("USER: ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            print(file=sys.stderr)
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            return 0
        if text == "/reset":
            session.history = []
            print("(new conversation)", file=sys.stderr)
            continue
        if text.startswith("/image"):
            path = text[len("/image"):].strip()
            try:
                session.set_image(path or None)
            except (DataError, ValueError) as err:
                print(f"eve-ms chat: error: {err}", file=sys.stderr)
                continue
            print(f"(new conversation {'about ' + path if path else 'without an image'})", file=sys.stderr)
            continue
        write("ASSISTANT: ")
        try:
            session.answer(text, write)
        except ValueError as err:
            write("\n")
            print(f"eve-ms chat: error: {err}", file=sys.stderr)
            continue
        write("\n")
