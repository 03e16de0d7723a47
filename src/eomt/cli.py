"""`eomt VERB ...`: one verb-first command line over the library.

Each verb lives in `eomt.commands.<verb>` and exposes `add_arguments(parser)` and `run(args) -> int`.
This module only dispatches; a mistyped verb is answered with the closest one.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import sys
import warnings
from typing import Sequence

VERBS: dict[str, str] = {
    "predict": "segment images, folders or globs and write results and overlay pictures",
    "train": "train a model from a config (YAML or preset) with key=value overrides",
    "eval": "evaluate a checkpoint on a dataset (PQ, mIoU, AP)",
    "data": "dataset tools: `eomt data check ...` (validate), `eomt data synthetic ...` (write a sample dataset)",
    "bench": "measure latency, throughput, FLOPs and memory",
    "export": "export the network to ONNX, TorchScript or an ExportedProgram",
    "convert": "convert a checkpoint between the official, transformers and eomt formats",
    "demo": "train, evaluate and predict on the built-in synthetic dataset (no downloads)",
    "configs": "list the named presets and print a config with every default",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eomt",
        description="EoMT: the Encoder-only Mask Transformer (panoptic, instance, semantic).",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, help_text in VERBS.items():
        try:
            module = importlib.import_module(f"eomt.commands.{verb}")
        except ModuleNotFoundError as e:
            if e.name != f"eomt.commands.{verb}":
                raise
            continue  # verb not available in this build
        p = sub.add_parser(verb, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _unrecognized(parser: argparse.ArgumentParser, verb: str | None, extra: list[str]) -> str:
    """One line naming the unknown arguments, with the closest option of the verb for a mistyped one."""
    target = parser
    if verb and parser._subparsers:  # type: ignore[union-attr]
        target = parser._subparsers._group_actions[0].choices[verb]  # type: ignore[union-attr]
    options = sorted({s for action in target._actions for s in action.option_strings if s.startswith("--")})
    msgs = []
    for item in extra:
        name = item.split("=", 1)[0]
        hint = difflib.get_close_matches(name, options, n=1, cutoff=0.7) if name.startswith("-") else []
        msgs.append(f"{item!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    noun = "option" if all(e.startswith("-") for e in extra) else "argument"
    return (f"{target.prog}: error: unrecognized {noun}{'s' if len(extra) > 1 else ''}: {', '.join(msgs)} "
            f"(see {target.prog} --help)")


class _NoAdverts(logging.Filter):
    """Drops third-party promotion lines (Lightning's "Tip: try installing ..."): not actionable."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("\N{ELECTRIC LIGHT BULB} Tip:")


def _configure_output(verbose: bool, engine: bool) -> None:
    """One line per event: our handler on the root logger only (Lightning's own handlers, added when
    it is imported before logging is configured, would print every line a second time), no
    adverts, and no deprecation warnings from inside libraries that a user cannot act on."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_NoAdverts())
    if not engine and "lightning" not in sys.modules:
        return
    import lightning.fabric  # noqa: F401  (imported here so that its handlers exist to be removed)
    import lightning.pytorch  # noqa: F401

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    known = set(parser._subparsers._group_actions[0].choices) if parser._subparsers else set()  # type: ignore[union-attr]
    if argv and not argv[0].startswith("-") and argv[0] not in known:
        hint = difflib.get_close_matches(argv[0], sorted(known), n=1, cutoff=0.5)
        msg = f"eomt: unknown command {argv[0]!r}"
        if hint:
            msg += f"; did you mean {hint[0]!r}?"
        print(msg + f" (commands: {', '.join(sorted(known))})", file=sys.stderr)
        return 2
    args, extra = parser.parse_known_args(argv)
    # `key=value` overrides may come after options (`eomt train cfg.yaml --resume never a.b=1`).
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        print(_unrecognized(parser, args.verb, extra), file=sys.stderr)
        return 2
    _configure_output(args.verbose, engine=args.verb in ("train", "eval", "demo"))
    if args.version:
        from eomt import __version__

        print(__version__)
        return 0
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("eomt: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, OSError, KeyError, FloatingPointError) as e:
        # Boundary errors (and a diverged training run) carry a one-line message naming the
        # file, field or step.
        if args.verbose:
            raise
        print(f"eomt {args.verb}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
