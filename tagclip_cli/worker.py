"""`tagclip worker`: an RQ worker that loads the TagCLIP engine once and consumes prediction jobs without
forking. Run one per GPU (CUDA_VISIBLE_DEVICES=0 tagclip worker, ...). Needs REDIS_URL."""

from __future__ import annotations

import argparse

from .errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", help="worker name (default tagclip-<host>-<pid>)")
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")


def run(args: argparse.Namespace) -> int:
    from backend.errors import SettingsError
    from worker.main import main

    try:
        return main(name=args.name, burst=args.burst)
    except SettingsError as e:
        raise UsageError(str(e)) from e
