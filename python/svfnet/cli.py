"""The ``svfnet`` command. Each stage registers its subcommand from its own module, so that this
file stays a table of contents: add a module to ``COMMAND_MODULES`` and give it
``add_parser(subparsers)``, which adds a subparser whose ``func(args) -> int`` runs the command."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
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
    "svfnet.commands.segment",
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
        import_module(name).add_parser(subparsers)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # a NIfTI header that disagrees with itself is the user's business: one plain line, no source
    # location (svfnet.data.nifti.HeaderWarning, matched by name so that --help imports no nibabel)
    if category.__name__ == "HeaderWarning":
        print(f"svfnet: warning: {message}", file=sys.stderr if file is None else file)
    else:
        _default_show_warning(message, category, filename, lineno, file, line)


_default_show_warning = warnings.showwarning


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like a Ctrl-C so that the same clean-up runs: worker
    processes are stopped, temporary files removed, work folders left as after an interruption."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextlib.contextmanager
def _sigterm_as_interruption():
    """SIGTERM raises :class:`Terminated` while the block runs (main thread only; restored after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _show_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with _sigterm_as_interruption():
            return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as error:
        # bad input: one clear line, no traceback
        print(f"svfnet {args.command}: error: {error}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"svfnet {args.command}: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print(f"svfnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
