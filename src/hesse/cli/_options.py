"""Options that several verbs share: one name, one metavar, one default and one help per concept.

Each verb's ``add_parser`` calls these instead of spelling the option itself, so ``--seed`` means
the same in ``analyze``, ``spectrum`` and ``report``. An older spelling stays accepted as a hidden
alias (``help=argparse.SUPPRESS``): it parses to the same destination and is not shown.
"""

from __future__ import annotations

import argparse
from typing import Any

#: Top eigenvalues reported by ``spectrum`` and at the final point of ``report``.
DEFAULT_K = 5

MODEL_HELP = ("a Python file and a function in it returning {'model', 'loss_fn', 'data'} "
              "(see the docs page 'Model files', examples/models.md)")


def add_model(p: Any, *, required: bool, default_text: str = "") -> None:
    p.add_argument("--model", metavar="FILE.py:FACTORY", required=required, help=MODEL_HELP + default_text)


def add_k(p: Any, what: str) -> None:
    p.add_argument("--k", type=int, default=DEFAULT_K, metavar="K",
                   help=f"number of top eigenvalues {what} (default {DEFAULT_K}; at most the parameter count)")


def add_seed(p: Any, what: str) -> None:
    p.add_argument("--seed", type=int, default=0, metavar="SEED", help=f"random seed ({what}; default 0)")


def add_plot(p: Any, what: str) -> None:
    p.add_argument("--plot", metavar="OUT.png", default=None, help=f"save {what} (.png, .pdf or .svg)")


def add_variables(p: Any) -> None:
    p.add_argument("--variables", metavar="NAMES", default=None,
                   help="variable order, comma separated (default x, y, z first, then alphabetical)")
    p.add_argument("--vars", dest="variables", metavar="NAMES", help=argparse.SUPPRESS)  # older spelling


def add_lr(p: Any, what: str) -> None:
    p.add_argument("--lr", type=float, default=None, metavar="LR", help=what)


def add_out(p: Any) -> None:
    p.add_argument("--out", default="hesse-report", metavar="DIR", help="report folder (default: hesse-report/)")


def add_train_mode(p: Any) -> None:
    p.add_argument("--train-mode", action="store_true",
                   help="evaluate the model in its own (training) mode: dropout on, BatchNorm as the "
                   "factory left it (default: eval mode, restored afterwards; eval_mode=False)")


def add_output(p: Any) -> None:
    """``--json`` and ``--quiet``, on every verb."""
    p.add_argument("--json", action="store_true", help="print every number as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress output (stderr)")
