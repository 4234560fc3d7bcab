"""The command line of ``bgmatting train`` (and ``python -m bgmatting.train.trainer``, which ``torchrun`` runs):
``[config.toml] [name=value ...] [--resume]`` → the config and its overrides."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import parse_overrides

__all__ = ["build_parser", "parse_train_args"]


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``bgmatting train``."""
    parser = argparse.ArgumentParser(prog="bgmatting train",
                                     description="Train Background Matting V2 (base or refine stage).")
    parser.add_argument("config", nargs="?", help="TOML file of TrainConfig options")
    parser.add_argument("options", nargs="*", help="name=value overrides, e.g. steps=1000 stage=refine")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in out_dir")
    return parser


def parse_train_args(argv: Sequence[str] | None = None) -> tuple[Any, dict[str, Any]]:
    """``argv`` → ``(config, overrides)`` for :func:`~bgmatting.train.trainer.train`: ``config`` is the TOML file
    (``{}`` when none is given; a first ``name=value`` that is not a file is an override), ``overrides`` the
    parsed ``name=value`` items plus ``resume``.

    Raises:
        SystemExit: ``--help`` or a usage error (argparse's).
        BgMattingError: an override that is not ``name=value`` or whose value cannot be parsed.
    """
    args = build_parser().parse_args(argv)
    items = list(args.options)
    config: Any = args.config
    if config is not None and "=" in config and not Path(config).exists():
        items.insert(0, config)
        config = None
    overrides = parse_overrides(items)
    if args.resume:
        overrides["resume"] = True
    return (config if config is not None else {}), overrides
