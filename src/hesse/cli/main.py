"""Entry point of the ``hesse`` command.

Each verb lives in its own module ``hesse.cli.<verb>`` exposing ``add_parser(subparsers)`` (which
registers the verb and sets ``func``) — this file only lists them and dispatches. Errors a user can
fix (bad expression, bad file, bad option) print one line to stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

VERBS = ("demo", "analyze", "minimize", "spectrum", "report")


class CLIError(Exception):
    """A user error with a message to print (exit status 2)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hesse",
        description="Second-order analysis: Hessians, spectra, critical points, curvature-aware "
        "optimization and training diagnostics.",
    )
    from hesse import __version__

    parser.add_argument("--version", action="version", version=f"hesse {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb in VERBS:
        try:
            module = importlib.import_module(f"hesse.cli.{verb}")
        except ModuleNotFoundError as err:
            if err.name == f"hesse.cli.{verb}":
                continue  # verb not part of this build
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from hesse.distributed import torchrun_session

    try:
        with torchrun_session():  # under torchrun: one process group, stdout on rank 0 only
            return int(args.func(args) or 0)
    except CLIError as err:
        print(f"hesse {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except (ValueError, TypeError) as err:
        print(f"hesse {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hesse {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
