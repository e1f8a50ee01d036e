"""``hesse analyze EXPR``: gradient, Hessian, eigenvalues and verdict at a point, or every critical
point in a box. The expression is parsed safely (:mod:`hesse.cli.expressions`); the math lives
in :mod:`hesse.geometry`."""

from __future__ import annotations

import argparse
import json
import math
import re
from typing import Any

from hesse._autodiff import gradient
from hesse._progress import message
from hesse.cli._errors import CLIError
from hesse.cli._options import add_output, add_plot, add_seed, add_variables
from hesse.cli.expressions import Expression, parse_bounds, parse_expression, parse_point
from hesse.geometry import CriticalPoint, classify, critical_points
from hesse.geometry.critical_points import MAX_STARTS

Box = list[tuple[float, float]]

DEFAULT_BOUNDS = "-2:2"
"""The box searched without --at or --bounds: [-2, 2] per variable, where the textbook examples
(x**4 - 2*x**2, the monkey saddle, Rosenbrock near its minimum) have their critical points."""

PLOT_HALF_WIDTH = 2.0
"""With --at, the plot shows the square of this half-width around the point."""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "analyze",
        help="critical points and local geometry of a function given as text",
        description="Analyze f given as an expression in x, y, z, ... (numbers, + - * / **, sin cos tan "
        "exp log sqrt tanh sinh cosh abs atan asin acos, pi, e). With --at: gradient, Hessian, "
        "eigenvalues, condition number and verdict at that point. Otherwise: all critical points "
        "in the box --bounds (default -2:2 per variable), found by multi-start Newton and sympy.",
    )
    p.add_argument("expression", help="e.g. \"x**4 + y**4 - 2*x**2 - 2*y**2 + 1\"")
    p.add_argument("--at", metavar="POINT", help="analyze one point: x=0,y=1 or 0,1")
    p.add_argument("--bounds", metavar="BOX", help="box for the critical point search: -2:2,-2:2 "
                   "(one low:high per variable; one interval is used for all)")
    add_variables(p)
    p.add_argument("--starts", type=int, default=None, metavar="N", help="Newton starts for the search (default 128+, "
                   "at most 2**20; chunked to fit the memory guard HESSE_MAX_MEMORY)")
    p.add_argument("--no-symbolic", action="store_true", help="skip the sympy route")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                   help="time guard of the sympy route (default 10)")
    p.add_argument("--time-limit", type=float, default=60.0, metavar="SECONDS",
                   help="overall time limit of the box search (default 60): what was found by then is "
                   "reported, with a note")
    add_seed(p, "scrambling of the Sobol starts of the box search")
    add_plot(p, "the contour figure (2 variables only)")
    add_output(p)
    # argparse reads any word that starts with "-" and is not a plain number as an option, so
    # "-x**2+y**2", "--bounds -2:2,-2:2" and "--at -1,0" would need "--" or "=". This verb's only
    # single-dash option is -h, so a single dash followed by anything else is a value (an
    # expression, a box or a point); argparse consults this matcher only for words that are not
    # one of the verb's options.
    p._negative_number_matcher = re.compile(r"^-(?!-)(?!h$).")
    p.set_defaults(func=run)


def _num(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def run(args: argparse.Namespace) -> int:
    verbose = not args.quiet
    variables = [v.strip() for v in args.variables.split(",") if v.strip()] if args.variables else None
    expr = parse_expression(args.expression, variables)  # refuses unsafe input before anything runs
    _check_options(args, expr)
    if args.at:
        points, box = _analyze_point(expr, args.at, as_json=args.json)
    else:
        points, box = _analyze_box(expr, args, verbose)
    if args.plot and box is not None:  # --plot is refused for other than two variables
        from hesse.plot import plot_contour  # matplotlib only when a plot is asked for

        fig = plot_contour(expr.function, box, points=points)
        fig.savefig(args.plot)
        message(f"wrote {args.plot}", verbose)
    return 0


def _check_options(args: argparse.Namespace, expr: Expression) -> None:
    """Refuse inconsistent options before any computation runs."""
    n = len(expr.variables)
    if args.plot:
        if not args.plot.lower().endswith((".png", ".pdf", ".svg")):
            raise CLIError(f"--plot expects a .png, .pdf or .svg path, got {args.plot!r}.")
        if n != 2:
            raise CLIError(f"--plot draws 2-D functions; this one has {n} variables ({', '.join(expr.variables)}).")
    if args.starts is not None and not 1 <= args.starts <= MAX_STARTS:
        raise CLIError(f"--starts must be an integer from 1 to {MAX_STARTS}, got {args.starts}.")
    if not args.timeout > 0 or not math.isfinite(args.timeout):
        raise CLIError(f"--timeout must be a positive number of seconds, got {args.timeout}.")
    if not args.time_limit > 0 or not math.isfinite(args.time_limit):
        raise CLIError(f"--time-limit must be a positive number of seconds, got {args.time_limit}.")
    if args.at and args.bounds:
        raise CLIError("give either --at (one point) or --bounds (search a box), not both.")


def _analyze_point(expr: Expression, at: str, *, as_json: bool) -> tuple[list[CriticalPoint], Box | None]:
    """Classify one point and print it; the plot box is PLOT_HALF_WIDTH around it (2-D only)."""
    x = parse_point(at, expr.variables)
    cp = classify(expr.function, x)
    out = {"expression": expr.text, "variables": list(expr.variables), "mode": "point",
           **{k: _num(v) for k, v in cp.as_dict().items()},
           "gradient": gradient(expr.function, x).tolist()}
    if as_json:
        print(json.dumps(out, indent=2))
    else:
        _print_point(expr, out)
    box = [(float(a) - PLOT_HALF_WIDTH, float(a) + PLOT_HALF_WIDTH) for a in x] if len(expr.variables) == 2 else None
    return [cp], box


def _analyze_box(expr: Expression, args: argparse.Namespace, verbose: bool) -> tuple[list[CriticalPoint], Box]:
    """Search the box of --bounds (default DEFAULT_BOUNDS per variable) and print the table."""
    n = len(expr.variables)
    if not args.bounds:
        message(f"no --at or --bounds: searching the box [-2, 2]^{n}", verbose)
    box = parse_bounds(args.bounds or DEFAULT_BOUNDS, n)
    try:
        pts = critical_points(expr, box, num_starts=args.starts, symbolic=not args.no_symbolic,
                                    symbolic_timeout=args.timeout, progress=verbose,
                                    time_limit=args.time_limit, seed=args.seed)
    except ValueError as err:  # the library names its arguments; say which option they came from
        msg = str(err).replace("num_starts", "--starts").replace("bounds ", "--bounds ", 1)
        raise CLIError(msg) from None
    out = {"expression": expr.text, "variables": list(expr.variables), "mode": "box", "bounds": box,
           "counts": pts.counts(), "num_starts": pts.num_starts, "symbolic": pts.symbolic_status,
           "notes": pts.notes, "points": [{k: _num(v) for k, v in p.as_dict().items()} for p in pts]}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        _print_table(expr, out)
    return list(pts), box


def _fmt_vec(v: Any) -> str:
    return "[" + ", ".join(f"{a:.6g}" for a in v) + "]"


def _print_point(expr: Expression, out: dict[str, Any]) -> None:
    names = expr.variables
    print(f"f({', '.join(names)}) = {expr.text}")
    print(f"at {', '.join(f'{n}={a:.6g}' for n, a in zip(names, out['x']))}:  f = {out['value']:.6g}")
    print(f"gradient        {_fmt_vec(out['gradient'])}   (norm {out['gradient_norm']:.3g}, tol {out['gradient_tol']:.3g})")
    print("Hessian")
    for row in out["hessian"]:
        print("   " + "  ".join(f"{a:12.6g}" for a in row))
    print(f"eigenvalues     {_fmt_vec(out['eigenvalues'])}   (zero if |λ| <= {out['eigenvalue_tol']:.3g})")
    print(f"index {out['index']}, nullity {out['nullity']}, condition number {out['condition_number']}")
    print(f"verdict: {out['kind']}" + (f" (order {out['order']})" if out["order"] else ""))
    print(f"why: {out['reason']}")


def _headline(box: str, counts: dict[str, int]) -> str:
    """``critical points with BOX: N (...)``; a non-isolated set (a curve or surface of critical points)
    is one entry and is named as a set, so isolated points and sets are not counted as the same thing."""
    sets = counts.get("non-isolated", 0)
    isolated = {k: v for k, v in counts.items() if k != "non-isolated"}
    n_points = sum(isolated.values())
    parts = [f"{v} {k}" for k, v in isolated.items()]
    if not sets:
        return f"critical points with {box}: {n_points} ({', '.join(parts) or 'none'})"
    noun = "set" if sets == 1 else "sets"
    head = f"{n_points} isolated point{'' if n_points == 1 else 's'}" + (f" ({', '.join(parts)})" if parts else "")
    return (f"critical points with {box}: {head} and {sets} non-isolated {noun} "
            f"(curves or surfaces of critical points; one point of each is listed)")


def _print_table(expr: Expression, out: dict[str, Any]) -> None:
    names = expr.variables
    print(f"f({', '.join(names)}) = {expr.text}")
    box = ", ".join(f"{n} in [{a:g}, {b:g}]" for n, (a, b) in zip(names, out["bounds"]))
    print(_headline(box, out["counts"]))
    head = f"{'#':>3}  {'point':<28} {'f':>12} {'kind':<20} {'eigenvalues':<30} {'cond':>10}  found by"
    print(head)
    for i, p in enumerate(out["points"], 1):
        cond = p["condition_number"]
        cond = f"{cond:.4g}" if isinstance(cond, float) else str(cond)
        print(f"{i:>3}  {_fmt_vec(p['x']):<28} {p['value']:>12.6g} {p['kind']:<20} "
              f"{_fmt_vec(p['eigenvalues']):<30} {cond:>10}  {p['found_by']}")
    print(f"Newton: {out['num_starts']} Sobol starts; sympy: {out['symbolic']}")
    for note in out["notes"]:
        print(f"note: {note}")
    for p in out["points"]:
        if p["kind"].startswith("degenerate") or p["kind"] in ("inconclusive", "non-isolated"):
            print(f"at {_fmt_vec(p['x'])}: {p['reason']}")
