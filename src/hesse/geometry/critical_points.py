"""All critical points of f in a box: multi-start damped Newton, plus sympy for expressions.

Numerical route: a scrambled Sobol set of starts (``scipy.stats.qmc``, Owen 1998) fills the box;
from every start, in one ``vmap`` batch, damped pseudo-inverse Newton iterations on ∇f = 0
(:mod:`hesse.geometry._newton`) converge to minima, saddles and maxima alike (Newton's method
for ∇f = 0 does not prefer minima). Converged points inside the box (gradient within the
tolerance of :func:`hesse.classify`) are merged when closer than ``dedup_tol`` and each is
classified. Finding *all* points is not guaranteed: a basin of attraction no start falls in is
missed; more ``num_starts`` lowers that risk.

Symbolic route (when f is a :class:`hesse.cli.expressions.Expression`, or any object with
``.sympy`` and ``.variables``): ``sympy.solve`` of ∇f = 0 in a background thread with a time
guard; real isolated solutions in the box are added and each point's ``found_by`` says
``"newton"``, ``"symbolic"`` or ``"newton+symbolic"``. Cost of the numerical route per
iteration: one batched gradient+Hessian and 13 batched gradients over the starts.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence

import numpy as np
import torch

from hesse._progress import message
from hesse._validation import check_positive_int
from hesse.geometry._newton import batched_newton
from hesse.geometry.classify import CriticalPoint, classify

__all__ = ["CriticalPointList", "critical_points"]

_KIND_ORDER = {"minimum": 0, "degenerate minimum": 1, "saddle": 2, "degenerate saddle": 3, "maximum": 4,
               "degenerate maximum": 5, "inconclusive": 6}


class CriticalPointList(list):
    """A list of :class:`CriticalPoint` with how it was found: ``num_starts``, ``iterations``,
    ``symbolic_status`` (what the sympy route did) and ``notes``."""

    def __init__(self, points, num_starts: int, iterations: int, symbolic_status: str, notes: list[str]):
        super().__init__(points)
        self.num_starts, self.iterations = num_starts, iterations
        self.symbolic_status, self.notes = symbolic_status, notes

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self:
            out[p.kind] = out.get(p.kind, 0) + 1
        return out

    def __repr__(self) -> str:
        rows = "\n".join(f"  {p.kind:<20} x={[round(float(a), 6) for a in p.x]} f={p.value:.6g} "
                         f"({p.found_by})" for p in self)
        return (f"CriticalPointList({len(self)} points, counts={self.counts()}, num_starts={self.num_starts}, "
                f"symbolic={self.symbolic_status!r})\n{rows}")


def _check_bounds(bounds) -> torch.Tensor:
    try:
        B = np.asarray(bounds, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"bounds must be a list of (low, high) pairs, got {bounds!r}.") from None
    if B.ndim != 2 or B.shape[1] != 2 or B.shape[0] == 0:
        raise ValueError(f"bounds must be a list of (low, high) pairs, one per coordinate; got shape {B.shape}.")
    if not np.isfinite(B).all() or not (B[:, 0] < B[:, 1]).all():
        raise ValueError(f"bounds must be finite with low < high in every coordinate; got {B.tolist()}.")
    return torch.as_tensor(B, dtype=torch.float64)


def _symbolic_solutions(expr, B: torch.Tensor, timeout: float) -> tuple[list[np.ndarray], str]:
    import sympy

    symbols = expr.sympy_symbols if hasattr(expr, "sympy_symbols") else tuple(
        sympy.Symbol(v, real=True) for v in expr.variables)
    box: dict = {}

    def work():
        try:
            e = expr.sympy
            eqs = [sympy.diff(e, s) for s in symbols]
            box["sol"] = sympy.solve(eqs, list(symbols), dict=True)
        except Exception as err:  # sympy raises many types (NotImplementedError, PolynomialError...)
            box["err"] = f"{type(err).__name__}: {err}"

    th = threading.Thread(target=work, daemon=True)
    th.start()
    th.join(timeout)
    if th.is_alive():
        return [], f"timed out after {timeout:g} s (sympy.solve still running in the background was abandoned)"
    if "err" in box:
        return [], f"failed ({box['err'][:200]})"
    points, parametric, complex_count = [], 0, 0
    for sol in box["sol"]:
        if len(sol) < len(symbols) or any(getattr(v, "free_symbols", set()) for v in sol.values()):
            parametric += 1
            continue
        try:
            vals = [complex(sympy.N(sol[s], 30)) for s in symbols]
        except (TypeError, ValueError):
            parametric += 1
            continue
        if any(abs(v.imag) > 1e-12 * max(1.0, abs(v.real)) for v in vals):
            complex_count += 1
            continue
        p = np.array([v.real for v in vals])
        lo, hi = B[:, 0].numpy(), B[:, 1].numpy()
        if (p >= lo).all() and (p <= hi).all():
            points.append(p)
    status = f"solved: {len(box['sol'])} solution(s), {len(points)} real in the box"
    if complex_count:
        status += f", {complex_count} complex"
    if parametric:
        status += f", {parametric} non-isolated (a curve or surface of critical points; not listed)"
    return points, status


def critical_points(f: Callable[[torch.Tensor], torch.Tensor], bounds: Sequence[tuple[float, float]], *,
                    num_starts: int | None = None, max_iter: int = 100, seed: int = 0,
                    symbolic: bool | str = "auto", symbolic_timeout: float = 10.0,
                    dedup_tol: float | None = None, higher_order: bool = True,
                    progress: bool = True) -> CriticalPointList:
    """All critical points of ``f`` found in the box ``bounds`` = [(low, high), ...], classified.

    ``f`` takes one flat float64 tensor of length len(bounds). ``num_starts`` defaults to
    2^ceil(log2(max(128, 32·n))) Sobol points. ``symbolic``: "auto" (try sympy when f carries a
    sympy expression), True (require it) or False. ``dedup_tol`` defaults to 1e-5·max(1, box
    diameter). Points are sorted by kind, then by coordinates. See the module docstring.
    """
    B = _check_bounds(bounds)
    n = B.shape[0]
    is_expr = hasattr(f, "sympy") and hasattr(f, "variables")
    func = f.function if is_expr and hasattr(f, "function") else f
    if not callable(func):
        raise TypeError(f"f must be callable (a function of one flat tensor) or a parsed expression; got "
                        f"{type(f).__name__}.")
    if is_expr and len(f.variables) != n:
        raise ValueError(f"bounds has {n} intervals but the expression has {len(f.variables)} variables "
                         f"({', '.join(f.variables)}).")
    if symbolic not in ("auto", True, False):
        raise ValueError(f"symbolic must be 'auto', True or False; got {symbolic!r}.")
    if symbolic is True and not is_expr:
        raise ValueError("symbolic=True needs an expression with a sympy form (hesse.cli.expressions."
                         "parse_expression); a Python callable has none. Use symbolic='auto' or False.")
    max_iter = check_positive_int(max_iter, "max_iter")
    if num_starts is None:
        num_starts = 2 ** math.ceil(math.log2(max(128, 32 * n)))
    num_starts = check_positive_int(num_starts, "num_starts")
    diam = float((B[:, 1] - B[:, 0]).norm())
    dedup_tol = 1e-5 * max(1.0, diam) if dedup_tol is None else float(dedup_tol)
    notes: list[str] = []

    from scipy.stats import qmc

    sobol = qmc.Sobol(d=n, scramble=True, seed=seed)
    m = int(math.ceil(math.log2(num_starts)))
    U = torch.as_tensor(sobol.random_base2(m)[:num_starts] if 2 ** m == num_starts else sobol.random(num_starts))
    X0 = B[:, 0] + U * (B[:, 1] - B[:, 0])
    message(f"critical points: damped Newton from {num_starts} Sobol starts in {n}-D box", progress)
    try:
        X, gnorm, iters = batched_newton(func, X0, max_iter=max_iter, max_step=diam / 4, progress=progress)
    except RuntimeError as err:  # data-dependent control flow cannot be vmapped: loop instead
        notes.append(f"vmap failed ({str(err).splitlines()[0][:120]}); starts were run one by one")
        message(notes[-1], progress)
        X, gnorm, iters = batched_newton(func, X0, max_iter=max_iter, max_step=diam / 4, progress=progress,
                                         vectorized=False)
    margin = 1e-9 * max(1.0, diam)
    inside = ((X >= B[:, 0] - margin) & (X <= B[:, 1] + margin)).all(1) & torch.isfinite(X).all(1)
    order = torch.argsort(gnorm.nan_to_num(float("inf")))
    candidates: list[tuple[np.ndarray, str]] = []
    for i in order.tolist():
        if not bool(inside[i]) or not math.isfinite(float(gnorm[i])):
            continue
        p = X[i].numpy()
        if any(np.linalg.norm(p - q) <= dedup_tol for q, _ in candidates):
            continue
        # cheap pre-filter: far from critical (classify applies the exact tolerance)
        if float(gnorm[i]) > 1e-4 * max(1.0, diam):
            continue
        candidates.append((p, "newton"))
    status = "not tried (f is a Python callable, not an expression)"
    if is_expr and symbolic in ("auto", True):
        message(f"critical points: sympy.solve of the gradient (time guard {symbolic_timeout:g} s)", progress)
        sym_points, status = _symbolic_solutions(f, B, symbolic_timeout)
        for p in sym_points:
            for j, (q, _by) in enumerate(candidates):
                if np.linalg.norm(p - q) <= dedup_tol:
                    candidates[j] = (p, "newton+symbolic")  # exact coordinates replace Newton's
                    break
            else:
                candidates.append((p, "symbolic"))
    elif is_expr:
        status = "not tried (symbolic=False)"
    points: list[CriticalPoint] = []
    for p, by in candidates:
        cp = classify(func, torch.as_tensor(p, dtype=torch.float64), higher_order=higher_order)
        if cp.kind == "not critical" or any(float((cp.x - q.x).norm()) <= dedup_tol for q in points):
            continue
        cp.found_by = by
        points.append(cp)
    points.sort(key=lambda c: (_KIND_ORDER.get(c.kind, 9), tuple(round(float(a), 9) for a in c.x)))
    if not points:
        notes.append("no critical point found in the box (none may exist; try more num_starts or a larger box)")
    message(f"critical points: {len(points)} found ({status})", progress)
    return CriticalPointList(points, num_starts, iters, status, notes)
