"""`eve-ms convert`: checkpoints from Hugging Face and the original PyTorch Eve into eve-ms, and back.

    eve-ms convert hf-llm    --src HF_DIR --out DIR       Llama / Mistral / InternLM -> LLM component folder
    eve-ms convert hf-vision --src HF_DIR --out DIR       SigLIP / CLIP / ResNet -> vision component folder
    eve-ms convert hf-eve    --llm DIR --vision DIR --out DIR [--adapter ldp]
                             the stage-1 starting point: converted LLM + vision encoder, a fresh adapter
    eve-ms convert moe-llava --src DIR --vision DIR --out DIR
                             an original Eve / MoE-LLaVA / LLaVA / MobileVLM checkpoint -> eve-ms checkpoint
    eve-ms convert to-hf-llm --src DIR --out DIR          the LLM of an eve-ms checkpoint -> Hugging Face Llama
                                                          (PanGu-pi Pro: the Eve release's InternLM layout)

Each prints a one-line JSON summary on success; a bad source prints one error line on stderr
and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys

EXIT_BAD_INPUT = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="conversion", metavar="CONVERSION", required=True)

    p = sub.add_parser("hf-llm", help="Hugging Face Llama/Mistral/InternLM (PanGu-pi Pro) -> eve-ms LLM folder")
    p.add_argument("--src", required=True, help="Hugging Face model folder")
    p.add_argument("--out", required=True, help="output folder")

    p = sub.add_parser("hf-vision", help="Hugging Face SigLIP/CLIP/ResNet -> eve-ms vision folder")
    p.add_argument("--src", required=True, help="Hugging Face model folder")
    p.add_argument("--out", required=True, help="output folder")
    _vision_options(p)

    p = sub.add_parser("hf-eve", help="LLM + vision encoder -> initial Eve checkpoint (stage 1's load_checkpoint)")
    p.add_argument("--llm", required=True, help="Hugging Face LLM folder or eve-ms LLM folder")
    p.add_argument("--vision", required=True, help="Hugging Face vision folder or eve-ms vision folder")
    p.add_argument("--adapter", default="ldp", choices=["ldp", "ldpv2", "mlp2x_gelu"], help="vision adapter")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder or tokenizer.json (default: the LLM's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the adapter's random initialisation")
    p.add_argument("--out", required=True, help="output checkpoint folder")
    _vision_options(p)

    p = sub.add_parser("moe-llava", help="original Eve / MoE-LLaVA checkpoint -> eve-ms checkpoint")
    p.add_argument("--src", required=True, help="original checkpoint folder (config.json + weights)")
    p.add_argument("--vision", required=True, help="Hugging Face vision folder giving the encoder's architecture")
    p.add_argument("--evf-mode", default=None, choices=["moe", "multimodal", "language_only"],
                   help="moe (default): the source's top-1 MoE, every token routed by the gate, text-only input "
                        "too; multimodal: Eve's EVF, text-only input takes the language FFN alone (a different "
                        "function from the source's); language_only: the language FFN (expert 0) on every token")
    p.add_argument("--strategy", default=None, choices=["gbpr", "random", "img_gbpr"],
                   help="allocation in multimodal mode (moe mode always routes by gbpr): gbpr (default) keeps an "
                        "over-full expert's tokens of highest gate probability; random keeps a random choice, as "
                        "DeepSpeed's random token selection; img_gbpr adds Eve's modality prior (image tokens "
                        "prefer the vision FFN) and redistributes overflow, which the source does not do")
    p.add_argument("--combine", default=None, choices=["prob", "unit"],
                   help="prob (default): the expert output times its gate probability, as DeepSpeed; unit: the "
                        "expert output unscaled (Eve's EVF)")
    p.add_argument("--capacity-factor", type=float, default=None,
                   help="capacity factor while training (default: the source's moe.capacity_factor)")
    p.add_argument("--eval-capacity-factor", type=float, default=None,
                   help="capacity factor at inference (default: the source's moe.eval_capacity_factor; 2 or more "
                        "drops no token with two experts)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the source folder's)")
    p.add_argument("--out", required=True, help="output checkpoint folder")

    p = sub.add_parser("to-hf-llm", help="LLM of an eve-ms checkpoint -> Hugging Face Llama folder "
                                         "(the Eve release's InternLM layout for PanGu-pi Pro)")
    p.add_argument("--src", required=True, help="eve-ms checkpoint folder (or eve-ms LLM folder)")
    p.add_argument("--out", required=True, help="output folder (config.json, model.safetensors, tokenizer)")


def _vision_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--select-layer", type=int, default=None,
                        help="hidden state fed to the adapter (default: -2 for ViTs, -1 for ResNet)")
    parser.add_argument("--image-size", type=int, default=None, help="input side (default: the source's)")


def _convert(args: argparse.Namespace) -> dict:
    from eve_ms.convert import hf_to_eve

    if args.conversion == "hf-llm":
        hf_to_eve.convert_hf_llm(args.src, args.out)
        return {}
    if args.conversion == "hf-vision":
        hf_to_eve.convert_hf_vision(args.src, args.out, args.select_layer, args.image_size)
        return {}
    if args.conversion == "hf-eve":
        _, config, tokenizer = hf_to_eve.assemble_eve(
            args.llm, args.vision, args.adapter, args.out, seed=args.seed, select_layer=args.select_layer,
            image_size=args.image_size, tokenizer=args.tokenizer,
        )
        return {"image_tokens": config.num_image_tokens, "tokenizer": tokenizer is not None}
    if args.conversion == "moe-llava":
        from eve_ms.convert.moe_llava import convert_moe_llava

        _, config, tokenizer, notes = convert_moe_llava(
            args.src, args.out, args.vision, strategy=args.strategy, mode=args.evf_mode, combine=args.combine,
            capacity_factor=args.capacity_factor, eval_capacity_factor=args.eval_capacity_factor,
            tokenizer=args.tokenizer,
        )
        return {"evf_layers": config.evf.layer_indices(config.llm.num_layers), "tokenizer": tokenizer is not None,
                "notes": notes}
    from eve_ms.convert.eve_to_hf import convert_eve_to_hf_llm

    convert_eve_to_hf_llm(args.src, args.out)
    return {}


def run(args: argparse.Namespace) -> int:
    import contextlib

    from eve_ms.config import ConfigError
    from eve_ms.data.report import DataError

    with contextlib.redirect_stdout(sys.stderr):  # library logs stay off stdout, which carries the summary
        from eve_ms.runtime import setup_context

        setup_context(mode="pynative")
        try:
            summary = _convert(args)
        except (ConfigError, DataError, ValueError, OSError) as err:
            print(f"eve-ms convert {args.conversion}: error: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
    print(json.dumps({"conversion": args.conversion, "out": args.out, **summary}))
    return 0
