"""The ``svfnet`` command. Each stage registers its subcommand from its own module, so that this
file stays a table of contents: add a module to ``COMMAND_MODULES`` and give it
``register(subparsers)``, which adds a subparser whose ``func(args) -> int`` runs the command."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from importlib import import_module

from svfnet import __version__

# Modules that define a subcommand (imported lazily: `svfnet --help` must not import torch).
COMMAND_MODULES: list[str] = [
    "svfnet.commands.info",
    "svfnet.commands.synth",
    "svfnet.commands.inspect",
    "svfnet.commands.prepare",
    "svfnet.commands.shapes",
    "svfnet.commands.references",
    "svfnet.commands.train",
    "svfnet.commands.evaluate",
    "svfnet.commands.run",
    "svfnet.commands.demons",
    "svfnet.commands.register",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="svfnet",
        description="Diffeomorphic registration of 3D cardiac images learned from shapes (SVF-Net).",
    )
    parser.add_argument("--version", action="version", version=f"svfnet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        import_module(name).register(subparsers)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # a NIfTI header that disagrees with itself is the user's business: one plain line, no source
    # location (svfnet.data.nifti.HeaderWarning, matched by name so that --help imports no nibabel)
    if category.__name__ == "HeaderWarning":
        print(f"svfnet: warning: {message}", file=sys.stderr if file is None else file)
    else:
        _default_show_warning(message, category, filename, lineno, file, line)


_default_show_warning = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _show_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as error:
        # bad input: one clear line, no traceback
        print(f"svfnet {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"svfnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
