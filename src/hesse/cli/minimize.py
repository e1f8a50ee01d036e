"""``hesse minimize "<expression>" --x0 -1.2,1 --method newton [--compare gd,bfgs,newton]
[--plot out.png] [--json] [--quiet] [--max-iter N] [--gtol G] [--lr LR] [--time-limit SECONDS]``

Parses the expression with the safe parser (``hesse.cli.expressions``), runs
:func:`hesse.minimize` for one method or several side by side, prints a table (or JSON on
stdout) and optionally saves trajectory + convergence plots. No math here.

Exit status: 0 when every method reached a verified minimum, :data:`NOT_SUCCESSFUL_EXIT_STATUS`
(3) when one did not (the run itself went fine), 2 for a user error, 1 for a bug in hesse.
"""

from __future__ import annotations

import json
import math
import re
import sys

from hesse.cli._options import add_lr, add_output, add_plot, add_variables
from hesse.cli.expressions import parse_expression
from hesse.cli.main import CLIError
from hesse.optimize import METHODS, minimize, resolve_method

#: Exit status when some method ran but did not reach a verified minimum (distinct from 1, a bug
#: in hesse, and 2, a user error).
NOT_SUCCESSFUL_EXIT_STATUS = 3
#: Default of --time-limit: seconds per method (the library's max_time).
DEFAULT_TIME_LIMIT = 60.0  # as analyze: one default per option across verbs


def add_parser(sub) -> None:
    p = sub.add_parser(
        "minimize",
        help="minimize a function given as an expression",
        description="Minimize f(x) given as an expression, e.g. "
        "hesse minimize \"100*(y - x**2)**2 + (1 - x)**2\" --x0 -1.2,1 --compare gd,bfgs,newton",
    )
    p.add_argument("expression", help="the function, in the variables of the expression (safe parser)")
    p.add_argument("--x0", required=True, metavar="POINT",
                   help="starting point, comma separated, in variable order: 0,1 or x=0,y=1")
    p.add_argument("--method", default="bfgs", metavar="METHOD",
                   help=f"method (default bfgs): {', '.join(METHODS)}")
    p.add_argument("--compare", default=None, metavar="METHODS",
                   help="comma-separated methods to run side by side (names as for --method)")
    add_variables(p)
    p.add_argument("--max-iter", type=int, default=1000, dest="max_iter", metavar="N",
                   help="iteration limit of each method (default 1000)")
    p.add_argument("--gtol", type=float, default=1e-5, metavar="TOL",
                   help="converged when the gradient norm is at most TOL (default 1e-5)")
    add_lr(p, "step size for gd/momentum/nesterov (default: chosen from the curvature at x0)")
    add_plot(p, "the trajectories (2 variables) and, next to it as NAME_convergence.png, the convergence curves")
    p.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT, dest="time_limit", metavar="SECONDS",
                   help=f"wall-clock limit per method (default {DEFAULT_TIME_LIMIT:g}); the run then stops "
                        "with status 2, 'maximum time reached'")
    add_output(p)
    # let "--x0 -1.2,1" through: argparse would otherwise read "-1.2,1" as an unknown option
    p._negative_number_matcher = re.compile(r"^-\d*\.?\d+(e[-+]?\d+)?(,\s*-?\d*\.?\d+(e[-+]?\d+)?)*$", re.I)
    p.set_defaults(func=run)


def _parse_x0(text: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise CLIError(f"--x0 must be comma-separated numbers, e.g. --x0 -1.2,1; got {text!r}") from None


def run(args) -> int:
    import torch


    if not math.isfinite(args.time_limit) or not args.time_limit > 0:
        raise CLIError(f"--time-limit must be a positive number of seconds, got {args.time_limit}.")
    variables = [v.strip() for v in args.variables.split(",")] if args.variables else None
    expr = parse_expression(args.expression, variables=variables)
    x0 = _parse_x0(args.x0)
    if len(x0) != len(expr.variables):
        raise CLIError(
            f"--x0 has {len(x0)} values but the expression has {len(expr.variables)} variables "
            f"({', '.join(expr.variables)}); give one value per variable in that order."
        )
    requested = [m.strip() for m in args.compare.split(",")] if args.compare else [args.method]
    methods = {}  # as the user wrote it -> hesse's name (scipy's spellings accepted)
    for m in requested:
        try:
            name, note = resolve_method(m)
        except (TypeError, ValueError) as err:
            raise CLIError(f"unknown method {m!r}: {err}") from None
        if note is not None:
            print(f"note: {note}", file=sys.stderr)
        methods[m] = name
    results = {}
    for m, name in methods.items():
        opts = {}
        if args.lr is not None and "lr" in METHODS[name].options:
            opts["lr"] = args.lr
        results[m] = minimize(expr.function, torch.tensor(x0, dtype=torch.float64), method=name,
                                    gtol=args.gtol, max_iter=args.max_iter, max_time=args.time_limit,
                              progress=not args.quiet, **opts)
    written = []
    if args.plot:
        from hesse.plot.optimize import plot_convergence, plot_trajectories

        if len(x0) == 2:
            fig = plot_trajectories(expr.function, results, variables=expr.variables)
            fig.savefig(args.plot)
            written.append(args.plot)
            stem, dot, ext = args.plot.rpartition(".")
            conv_path = f"{stem}_convergence.{ext}" if dot else args.plot + "_convergence"
        else:
            conv_path = args.plot
        plot_convergence(results).savefig(conv_path)
        written.append(conv_path)
    if args.json:
        out = [
            dict(method=m, success=r.success, status=r.status, message=r.message, x=r.x.tolist(),
                 variables=list(expr.variables), fun=r.fun, grad_norm=r.grad_norm, nit=r.nit, nfev=r.nfev,
                 njev=r.njev, nhev=r.nhev, num_matvecs=r.num_matvecs, min_eigenvalue=r.min_eigenvalue,
                 convergence_order=r.convergence_order)
            for m, r in results.items()
        ]
        json.dump(out if len(out) > 1 else out[0], sys.stdout, indent=1)
        print()
        for path in written:  # stdout holds one JSON document: the file list goes to stderr
            print(f"wrote {path}", file=sys.stderr)
    else:
        names = ", ".join(expr.variables)
        print(f"f({names}) = {args.expression}    x0 = {x0}")
        print(f"{'method':20s} {'success':8s} {'f':>12s} {'||g||':>9s} {'iters':>6s} {'f-evals':>8s} {'order':>12s}  x")
        for m, r in results.items():
            xs = ", ".join(f"{v:.6g}" for v in r.x.tolist())
            print(f"{m:20s} {str(r.success):8s} {r.fun:12.6g} {r.grad_norm:9.2e} {r.nit:6d} {r.nfev:8d} "
                  f"{r.convergence_order:>12s}  ({xs})")
        for m, r in results.items():
            if not r.success:
                print(f"  {m}: {r.message}")
        for path in written:
            print(f"wrote {path}")
    return 0 if all(r.success for r in results.values()) else NOT_SUCCESSFUL_EXIT_STATUS
