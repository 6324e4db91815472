"""`eve-ms data`: its actions, `check` (eve_ms.data.check) and `mix` (eve_ms.data.mix)."""
from __future__ import annotations

from eve_ms.data import check, mix


def add_arguments(parser) -> None:
    actions = parser.add_subparsers(dest="data_action", metavar="ACTION", required=True)
    check.add_arguments(actions.add_parser("check", help="validate a LLaVA-format data set and summarise every problem"))
    mix.add_arguments(actions.add_parser("mix", help="one LLaVA-format JSONL drawn from several sources by a recipe"))
