"""Entry point of the ``hesse`` command.

Each verb lives in its own module ``hesse.cli.<verb>`` exposing ``add_parser(subparsers)`` (which
registers the verb and sets ``func``) — this file only lists them and dispatches.

Errors a user can fix (bad expression, bad file, bad option, a model or data set that does not fit)
print one line to stderr and exit with status 2: :class:`CLIError` and the ``ValueError`` /
``TypeError`` / ``OSError`` that hesse raises on bad input. Any other exception is a defect of hesse
itself: its traceback is printed with a request to report it, exit status 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

# Importing hesse.cli.main has imported the package (and torch) already: these cost nothing more.
# The verbs' modules import their heavy dependencies (matplotlib, the demo data) when they run.
from importlib.metadata import PackageNotFoundError, version

from hesse.cli._errors import CLIError
from hesse.distributed import torchrun_session

VERBS = ("demo", "analyze", "minimize", "spectrum", "report")


#: Exit status of an interrupted command (128 + SIGINT, the shell's convention).
INTERRUPTED_EXIT_STATUS = 130

#: Exceptions reported as a user's mistake: one line, exit status 2. hesse validates its inputs
#: with ValueError/TypeError (house style); OSError covers files the user named.
USER_ERRORS = (CLIError, ValueError, TypeError, OSError)

BUG_EXIT_STATUS = 1

#: Characters of a torch error message kept in a one-line error (its first sentence or two).
_MESSAGE_CHARS = 200


def _version() -> str:
    try:
        return version("hesse")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


__all__ = ["CLIError", "USER_ERRORS", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hesse",
        description="Second-order analysis: Hessians, spectra, critical points, curvature-aware "
        "optimization and training diagnostics.",
    )
    parser.add_argument("--version", action="version", version=f"hesse {_version()}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb in VERBS:
        importlib.import_module(f"hesse.cli.{verb}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with torchrun_session():  # under torchrun: one process group, stdout on rank 0 only
            return int(args.func(args) or 0)
    except USER_ERRORS as err:
        text = " ".join(str(err).split()) or type(err).__name__
        print(f"hesse {args.verb}: error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hesse {args.verb}: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT_STATUS
    except Exception as err:  # noqa: BLE001 -- not a user error: show everything
        if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
            print(f"hesse {args.verb}: error: out of memory ({' '.join(str(err).split())[:_MESSAGE_CHARS]}); analyse fewer "
                  "batches (--batches N), smaller batches, or use a device with more memory.", file=sys.stderr)
            return 2
        traceback.print_exc()
        print(f"hesse {args.verb}: internal error: this is a bug in hesse, please report it "
              "(with the command line and the traceback above).", file=sys.stderr)
        return BUG_EXIT_STATUS


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
