"""`xtalign <verb>`: the command-line entry point. Each verb lives in its own module with
`add_parser(subparsers)` and `run(args) -> int`; heavy imports happen inside `run`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from xtalign.cli.common import EXIT_FAILURE, EXIT_USAGE, CLIError

# verb name -> module under xtalign.cli (modules missing from a checkout are skipped)
VERBS = {
    "tokenizers": "tokenizers_cmd",
    "models": "models_cmd",
    "encode": "encode",
    "overlap": "overlap",
    "build-projection": "build_projection",
    "inspect": "inspect_cmd",
    "audit": "audit",
    "align": "align",
    "distill": "distill",
    "cache-teachers": "cache_teachers",
    "eval": "eval_cmd",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(EXIT_USAGE, f"xtalign: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="xtalign", description="Cross-tokenizer alignment and distillation toolkit.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="verb", metavar="<verb>", parser_class=_Parser)
    for verb, module in VERBS.items():
        try:
            mod = importlib.import_module(f"xtalign.cli.{module}")
        except ModuleNotFoundError as exc:
            if exc.name == f"xtalign.cli.{module}":
                continue
            raise
        mod.add_parser(sub, verb)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse `argv`; `KEY=VALUE` overrides may stand anywhere on the line for verbs that take them."""
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if not (hasattr(args, "overrides") and "=" in a and not a.startswith("-"))]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = _parse(parser, list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not args.verb:
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.run(args))
    except CLIError as exc:
        print(f"xtalign {args.verb}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - one clear line instead of a traceback
        from xtalign.zoo.artifacts import ArtifactError
        from xtalign.zoo.registry import UnknownTokenizerError

        if isinstance(exc, UnknownTokenizerError):
            print(f"xtalign {args.verb}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if isinstance(exc, ArtifactError):
            print(f"xtalign {args.verb}: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        if args.verbose:
            raise
        print(f"xtalign {args.verb}: failed: {type(exc).__name__}: {exc} (rerun with -v for details)", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())
