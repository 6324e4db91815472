"""`eve-ms serve`: serve a checkpoint over an OpenAI-compatible HTTP API, with a chat page at /.

    eve-ms serve --checkpoint DIR [--host 127.0.0.1] [--port 8000] [--allow-local-files]

The model runs as `eve-ms chat` runs it (same tokenizer, `v1` template, language-only EVF
layers for text prompts), so a request gets the tokens `eve-ms chat` prints for the same prompt,
image and seed. Requests that wait are batched (`--max-batch` share each decode step), at most
`--max-queue` wait; beyond that the server answers 503 with Retry-After. uvicorn serves the
FastAPI app; stop it with Ctrl-C.
"""
from __future__ import annotations

import argparse
import os
import sys

from eve_ms.data.templates import TEMPLATES

EXIT_BAD_INPUT = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="eve-ms checkpoint folder (with its tokenizer/)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model-name", default=None,
                        help="the model's name in the API (default: the checkpoint folder's name)")
    parser.add_argument("--allow-local-files", action="store_true",
                        help="accept file:// image URLs (any file this process can read: trusted clients only)")
    parser.add_argument("--max-batch", type=int, default=8, help="requests that share one decode step")
    parser.add_argument("--max-queue", type=int, default=32, help="requests that may wait; more get 503")
    parser.add_argument("--max-tokens", type=int, default=256,
                        help="reply length when a request sets no max_tokens (cut to what the context leaves)")
    parser.add_argument("--max-image-bytes", type=int, default=20 * 1024 * 1024, help="largest image file accepted")
    parser.add_argument("--max-image-pixels", type=int, default=50_000_000,
                        help="largest image accepted, width x height")
    parser.add_argument("--language-only", action="store_true",
                        help="run EVF layers language-only even with an image")
    parser.add_argument("--template", default="v1", choices=sorted(TEMPLATES), help="conversation template")
    parser.add_argument("--device-target", default=None,
                        help="CPU | GPU | Ascend (default: $EVE_DEVICE_TARGET, else CPU)")
    parser.add_argument("--exec-mode", default="pynative", choices=["pynative", "graph"],
                        help="MindSpore execution mode (graph compiles each new shape once)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def _error(message: str) -> int:
    print(f"eve-ms serve: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def run(args: argparse.Namespace) -> int:
    from eve_ms.checkpoint_dir import check_not_lora, read_eve_config
    from eve_ms.config import ConfigError
    from eve_ms.inference.chat import GRAPH_LENGTH_BUCKET, load_for_generation
    from eve_ms.serve.prompts import Limits

    for name in ("max_batch", "max_queue", "max_tokens", "max_image_bytes", "max_image_pixels"):
        if getattr(args, name) < 1:
            return _error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    try:
        read_eve_config(args.checkpoint)  # a bad checkpoint fails before the slow part
        check_not_lora(args.checkpoint)
        model, config, tokenizer = load_for_generation(args.checkpoint, args.device_target, args.exec_mode, "serve")
    except (ConfigError, ValueError, OSError) as err:
        return _error(str(err))
    import uvicorn

    from eve_ms.data.templates import get_template
    from eve_ms.inference.generate import Generator

    from eve_ms.serve.app import create_app
    from eve_ms.serve.engine import Engine

    bucket = GRAPH_LENGTH_BUCKET if args.exec_mode == "graph" else 1  # as `eve-ms chat`
    engine = Engine(Generator(model, tokenizer, length_bucket=bucket), max_batch=args.max_batch,
                    max_queue=args.max_queue, language_only=True if args.language_only else None)
    limits = Limits(max_image_bytes=args.max_image_bytes, max_image_pixels=args.max_image_pixels,
                    allow_local_files=args.allow_local_files, default_max_tokens=args.max_tokens)
    name = args.model_name or os.path.basename(os.path.normpath(args.checkpoint))
    app = create_app(engine, tokenizer, config, get_template(args.template), name, limits)
    engine.start()
    print(f"eve-ms serve: model {name!r} at http://{args.host}:{args.port}/ (API under /v1)", file=sys.stderr)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    finally:
        engine.stop()
    return 0
