"""`eomt VERB ...`: one verb-first command line over the library.

Each verb lives in `eomt.commands.<verb>` and exposes `add_arguments(parser)` and `run(args) -> int`;
its help is the module's docstring (the first paragraph in `eomt --help`, all of it in
`eomt VERB --help`). This module only dispatches: a mistyped verb or option is answered with the
closest one, every option's default is shown in `--help`, and an error of the project's family
(`eomt.errors.EomtError`: a bad config, checkpoint, dataset, image or option) is one line on
stderr with exit status 1, as is an operating-system error with an errno (permission denied, disk
full). Any other exception is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import sys
import warnings
from typing import Any, Sequence

from eomt.errors import EomtError

VERBS = ("predict", "train", "eval", "data", "bench", "export", "convert", "demo", "configs")


class _Recorder:
    """An argument group that records the option strings added through it in its parser."""

    def __init__(self, group: Any, options: set[str]) -> None:
        self._group, self._options = group, options

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = self._group.add_argument(*args, **_with_default(kwargs))
        self._options.update(action.option_strings)
        return action

    def __getattr__(self, name: str) -> Any:
        return getattr(self._group, name)


class CommandParser(argparse.ArgumentParser):
    """An `ArgumentParser` that keeps its own record of the options added to it (`options`, for
    did-you-mean hints) and appends "(default: ...)" to an option's help where the help does not
    state its default already. Only public argparse API is used."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        self.options: set[str] = set()
        self.commands: dict[str, CommandParser] = {}
        self._wrap_groups = False  # argparse's own groups (made in __init__) stay as they are
        super().__init__(*args, **kwargs)
        self._wrap_groups = True

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:  # type: ignore[override]
        action = super().add_argument(*args, **_with_default(kwargs))
        self.options.update(action.option_strings)
        return action

    def add_argument_group(self, *args: Any, **kwargs: Any) -> Any:
        group = super().add_argument_group(*args, **kwargs)
        return _Recorder(group, self.options) if self._wrap_groups else group

    def add_mutually_exclusive_group(self, **kwargs: Any) -> Any:
        return _Recorder(super().add_mutually_exclusive_group(**kwargs), self.options)


def _with_default(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of `add_argument` with the default appended to the help, where the
    default is a value worth showing (not None, False or suppressed) and the help does not name it."""
    help_text, default = kwargs.get("help"), kwargs.get("default")
    if (help_text and help_text != argparse.SUPPRESS and "default" not in help_text
            and default not in (None, False, argparse.SUPPRESS) and not isinstance(default, list)):
        kwargs = {**kwargs, "help": f"{help_text} (default: %(default)s)"}
    return kwargs


def command_help(doc: str | None) -> str:
    """The one-line help of a command from its module docstring's first paragraph.

    A line of the form "`eomt VERB ...`: summary" gives its summary; several such lines (a verb
    with actions, e.g. `eomt data`) are joined by "; ". Other lines are joined as prose.
    """
    lines = [line.strip() for line in (doc or "").strip().split("\n\n", 1)[0].splitlines()]
    usage = [line.split("`: ", 1)[1].rstrip(".") for line in lines if line.startswith("`") and "`: " in line]
    return "; ".join(usage) if usage else " ".join(lines).rstrip(".")


def build_parser() -> CommandParser:
    """The `eomt` parser, one sub-parser per available verb (recorded in `parser.commands`)."""
    parser = CommandParser(
        prog="eomt",
        description="EoMT: the Encoder-only Mask Transformer (panoptic, instance, semantic).",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb in VERBS:
        try:
            module = importlib.import_module(f"eomt.commands.{verb}")
        except ModuleNotFoundError as e:
            if e.name != f"eomt.commands.{verb}":
                raise
            continue  # verb not available in this build
        doc = module.__doc__ or module.run.__doc__
        p = sub.add_parser(verb, help=command_help(doc), description=(doc or "").strip())
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
        parser.commands[verb] = p
    return parser


def _unrecognized(parser: CommandParser, verb: str | None, extra: list[str]) -> str:
    """One line naming the unknown arguments, with the closest option of the verb for a mistyped one."""
    target = parser.commands.get(verb, parser) if verb else parser
    options = sorted(s for s in target.options if s.startswith("--"))
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
    known = set(parser.commands)
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
    except EomtError as e:
        # User errors carry a one-line message naming the file, key, option or step.
        if args.verbose:
            raise
        print(f"eomt {args.verb}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        # The system's own refusals (permission denied, disk full, a read-only folder) are about
        # the user's machine, not a bug: one line with the path the system names.
        if args.verbose or e.errno is None:
            raise
        print(f"eomt {args.verb}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
