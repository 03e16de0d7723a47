"""One module per `eomt` verb (`add_arguments(parser)`, `run(args) -> int`), and the arguments they share."""

from __future__ import annotations

import argparse


def add_trust_pickle(p: argparse.ArgumentParser, what: str = "the model file", note: str = "") -> None:
    """The `--trust-pickle` switch, worded the same on every command that loads files."""
    p.add_argument("--trust-pickle", action="store_true",
                   help=f"let {what} run code when it is loaded (pickled Python objects, a .ts TorchScript "
                        f"file): only for files whose source you trust{note}")
