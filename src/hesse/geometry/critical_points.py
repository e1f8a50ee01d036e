"""All critical points of f in a box: multi-start damped Newton, plus sympy for expressions.

Numerical route: a scrambled Sobol set of starts (``scipy.stats.qmc``, Owen 1998) fills the box;
from every start, in one ``vmap`` batch, damped pseudo-inverse Newton iterations on ∇f = 0
(:mod:`hesse.geometry._newton`) converge to minima, saddles and maxima alike (Newton's method
for ∇f = 0 does not prefer minima). Converged points inside the box (a Newton step ‖H⁻¹∇f‖
within the location tolerance, which does not depend on the scale of f; :func:`hesse.classify`
applies the exact test) are merged when closer than ``dedup_tol`` and each is classified. A
valley or ridge of critical points is classified once (``"non-isolated"``), and further starts
landing on it are merged, instead of classifying every point of it. The starts run in chunks
that keep the batched Hessians (starts x n² floats) within the memory guard, and the whole
search within ``time_limit``. Finding *all* points is not guaranteed: a basin of attraction no start falls in is
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
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from hesse._memory import default_max_memory, format_bytes
from hesse._progress import message
from hesse._validation import check_positive_int
from hesse.geometry._newton import ALPHAS as _NEWTON_TRIALS
from hesse.geometry._newton import batched_newton, newton_diagnostics, step_tolerance
from hesse.geometry.classify import CriticalPoint, classify

__all__ = ["MAX_STARTS", "CriticalPointList", "critical_points", "newton_chunk_size"]

_KIND_ORDER = {"minimum": 0, "degenerate minimum": 1, "saddle": 2, "degenerate saddle": 3, "maximum": 4,
               "degenerate maximum": 5, "non-isolated": 6, "inconclusive": 7}

MAX_STARTS = 2**20
"""Most Newton starts one search takes: ~1e6 covers a 20-D box at 2 points per axis; more is a typo."""

HESSIAN_COPIES = 8
"""Dense n x n blocks held per start during one batched Newton iteration (the vmapped Hessian and
its intermediates, the symmetrised copy, the eigenvectors, the masked copy): the memory estimate
is starts x HESSIAN_COPIES x n² x itemsize."""

def _first_chunk(n: int) -> int:
    """Starts in the first Newton chunk (about 2^16 Hessian entries); its measured cost sizes the
    next chunks (see critical_points)."""
    return max(1, min(1024, 2**16 // (n * n)))

MAX_SYMBOLIC_EXPONENT = 40
"""sympy.solve expands powers: beyond this exponent the polynomial systems are impractical, and
the thread running them cannot be stopped (it keeps the interpreter busy after its time guard)."""


def newton_chunk_size(n: int, dtype: torch.dtype, max_memory: int | None = None) -> int:
    """How many starts one batched Newton iteration may hold within ``max_memory`` bytes (default
    the memory guard, ``HESSE_MAX_MEMORY`` or 4 GiB): max_memory / (HESSIAN_COPIES·n²·itemsize)."""
    limit = default_max_memory() if max_memory is None else int(max_memory)
    itemsize = torch.empty((), dtype=dtype).element_size()
    return int(limit // (HESSIAN_COPIES * n * n * itemsize))


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
    with np.errstate(over="ignore"):
        width = B[:, 1] - B[:, 0]
    # points of a wider box overflow when squared (‖x‖², x**2 terms): the search would see only inf
    diam = float(np.sqrt(np.sum((width / width.max()) ** 2)) * width.max()) if np.isfinite(width).all() else math.inf
    if not math.isfinite(diam) or diam > 1e150:
        raise ValueError(f"bounds {B.tolist()} are too wide for float64: the box's width overflows or its "
                         "points square to inf; give a box of at most about 1e150 per side.")
    return torch.as_tensor(B, dtype=torch.float64)


_EPS = float(torch.finfo(torch.float64).eps)


def _values(func, X: torch.Tensor) -> torch.Tensor | None:
    """f at every row (vmap, else a loop); None if f cannot be evaluated in a batch."""
    try:
        return torch.func.vmap(func)(X)
    except RuntimeError:
        try:
            return torch.stack([torch.as_tensor(func(x)) for x in X[:256]])
        except (RuntimeError, ValueError, TypeError):
            return None


def _symbolic_solutions(expr, B: torch.Tensor, timeout: float) -> tuple[list[np.ndarray], str]:
    import sympy

    symbols = expr.sympy_symbols if hasattr(expr, "sympy_symbols") else tuple(
        sympy.Symbol(v, real=True) for v in expr.variables)
    if timeout <= 0:
        return [], "skipped (no time left within time_limit)"
    exponents = [abs(p.exp) for p in expr.sympy.atoms(sympy.Pow) if p.exp.is_number and p.exp.is_real]
    biggest = max(exponents, default=0)
    if biggest > MAX_SYMBOLIC_EXPONENT:
        return [], (f"skipped: an exponent of {float(biggest):g} (> {MAX_SYMBOLIC_EXPONENT}) makes symbolic "
                    "solving impractical; the Newton route ran alone")
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
                    progress: bool = True, time_limit: float | None = 60.0,
                    max_memory: int | None = None) -> CriticalPointList:
    """All critical points of ``f`` found in the box ``bounds`` = [(low, high), ...], classified.

    ``f`` takes one flat float64 tensor of length len(bounds). ``num_starts`` defaults to
    2^ceil(log2(max(128, 32·n))) Sobol points. ``symbolic``: "auto" (try sympy when f carries a
    sympy expression), True (require it) or False. ``dedup_tol`` defaults to 1e-5·max(1, box
    diameter). Points are sorted by kind, then by coordinates. See the module docstring.

    Budgets: ``time_limit`` seconds (None: none) for the whole search: Newton stops, sympy's guard
    shrinks to what is left, and candidates not yet classified are dropped, with a note in
    ``notes``; the points found so far are returned. ``num_starts`` is at most :data:`MAX_STARTS`;
    starts run in chunks of :func:`newton_chunk_size` so that the batched Hessians stay within
    ``max_memory`` bytes (default the memory guard, ``HESSE_MAX_MEMORY`` or 4 GiB).

    A set of critical points that is not isolated (a valley, a ridge) is classified once, as
    ``"non-isolated"`` with its direction in ``reason``; further starts that end on critical
    points with the same value of f and the same singular Hessian rank are merged into it (so
    distinct valleys at the same level are reported as one, with a note).
    """
    start_time = time.monotonic()
    if time_limit is not None and not (isinstance(time_limit, (int, float)) and time_limit > 0):
        raise ValueError(f"time_limit must be a positive number of seconds or None; got {time_limit!r}.")
    deadline = None if time_limit is None else start_time + float(time_limit)
    # Newton may use the first 60% of the time, sympy up to 80%: classifying what was found needs the rest
    newton_deadline = None if time_limit is None else start_time + 0.6 * float(time_limit)
    symbolic_deadline = None if time_limit is None else start_time + 0.8 * float(time_limit)
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
    if num_starts > MAX_STARTS:
        raise ValueError(f"num_starts={num_starts} exceeds the maximum of {MAX_STARTS}; Sobol starts this many "
                         "cover a box no better than a smaller box searched with fewer. Lower num_starts.")
    chunk = newton_chunk_size(n, torch.float64, max_memory)
    limit = default_max_memory() if max_memory is None else int(max_memory)
    per_start = HESSIAN_COPIES * n * n * 8
    if chunk < 1:
        raise ValueError(f"one Newton start in {n} variables holds about {format_bytes(per_start)} of dense "
                         f"Hessians, over the memory guard of {format_bytes(limit)} (HESSE_MAX_MEMORY): "
                         "num_starts cannot be served. Reduce the number of variables or raise max_memory.")
    if num_starts * 8 * n * (2 + len(_NEWTON_TRIALS)) > limit:
        raise ValueError(f"num_starts={num_starts} starts in {n} variables need "
                         f"{format_bytes(num_starts * 8 * n * (2 + len(_NEWTON_TRIALS)))} for the iterates alone, "
                         f"over the memory guard of {format_bytes(limit)}; lower num_starts.")
    diam = float((B[:, 1] - B[:, 0]).norm())
    dedup_tol = 1e-5 * max(1.0, diam) if dedup_tol is None else float(dedup_tol)
    notes: list[str] = []

    from scipy.stats import qmc

    sobol = qmc.Sobol(d=n, scramble=True, seed=seed)
    m = int(math.ceil(math.log2(num_starts)))
    U = torch.as_tensor(sobol.random_base2(m)[:num_starts] if 2 ** m == num_starts else sobol.random(num_starts))
    X0 = B[:, 0] + U * (B[:, 1] - B[:, 0])
    message(f"critical points: damped Newton from {num_starts} Sobol starts in {n}-D box"
            + (f" (chunks of at most {chunk} within the memory guard)" if chunk < num_starts else ""),
            progress)
    vectorized = True
    with torch.no_grad():
        F0 = _values(func, X0)
    if F0 is not None and not bool(torch.isfinite(F0).any()):
        raise ValueError(f"f is not finite at any of the {num_starts} starts in the box (bounds "
                         f"{B.tolist()}): the box is too large for float64 or f is undefined there.")
    parts, iters = [], 0
    # chunks also bounded in time: the deadline is checked between Newton iterations, so one
    # iteration over a chunk must take a small part of the time limit. The first chunk is small
    # and its measured cost per start-iteration sizes the next ones.
    size = min(chunk, _first_chunk(n))
    lo = 0
    while lo < num_starts:
        if newton_deadline is not None and time.monotonic() > newton_deadline:
            notes.append(f"time limit of {time_limit:g} s: Newton stopped at its share ({0.6 * time_limit:g} s) with "
                         f"{lo} of {num_starts} starts run (raise time_limit to run them all)")
            break
        part = X0[lo:lo + size]
        t0 = time.monotonic()
        try:
            if not vectorized:
                raise RuntimeError("vmap disabled")
            res = batched_newton(func, part, max_iter=max_iter, max_step=diam / 4, progress=progress,
                                 deadline=newton_deadline)
        except RuntimeError as err:  # data-dependent control flow cannot be vmapped: loop instead
            if vectorized:
                notes.append(f"vmap failed ({str(err).splitlines()[0][:120]}); starts were run one by one")
                message(notes[-1], progress)
            vectorized = False
            res = batched_newton(func, part, max_iter=max_iter, max_step=diam / 4, progress=progress,
                                 vectorized=False, deadline=newton_deadline)
        lo += len(part)
        per_start_iteration = (time.monotonic() - t0) / max(1, res[2] * len(part))
        if time_limit is not None:
            size = int(min(chunk, max(1, 0.05 * time_limit / max(per_start_iteration, 1e-9))))
        else:
            size = chunk
        Xp, gp, it = res
        iters = max(iters, it)
        margin = 1e-9 * max(1.0, diam)
        inside = ((Xp >= B[:, 0] - margin) & (Xp <= B[:, 1] + margin)).all(1) & torch.isfinite(Xp).all(1)
        keep = inside & torch.isfinite(gp) & (gp <= 1e-4 * max(1.0, diam))  # cheap pre-filter
        Xk = Xp[keep]
        if len(Xk):
            vals, steps, nullity = newton_diagnostics(func, Xk.detach(), vectorized=vectorized)
            parts.append((Xk, gp[keep], vals, steps, nullity))
        if newton_deadline is not None and time.monotonic() > newton_deadline and lo < num_starts:
            notes.append(f"time limit of {time_limit:g} s: Newton stopped at its share ({0.6 * time_limit:g} s) with "
                         f"{lo} of {num_starts} starts run (raise time_limit to run them all)")
            break
    if parts:
        X, gnorm, vals, steps, nullity = (torch.cat(t) for t in zip(*parts))
    else:
        X = torch.empty(0, n, dtype=torch.float64)
        gnorm = vals = steps = torch.empty(0, dtype=torch.float64)
        nullity = torch.empty(0, dtype=torch.long)
    converged = steps <= 1e3 * step_tolerance(X)  # classify applies the exact test
    stalled = int((~converged & (gnorm <= 1e-12)).sum())
    if stalled:
        j = int(torch.nonzero(~converged & (gnorm <= 1e-12))[0])
        notes.append(f"{stalled} start(s) stopped where ‖∇f‖ is tiny but the Newton step is still long (e.g. at "
                     f"{[round(float(a), 4) for a in X[j]]}, step {float(steps[j]):.2g}): f is very flat there on "
                     "its own scale; a high-order degenerate critical point may lie nearby (try more max_iter)")
    order = torch.argsort(gnorm)
    candidates: list[tuple[np.ndarray, str, float, int]] = []
    for i in order.tolist():
        if not bool(converged[i]):
            continue
        p = X[i].numpy()
        if any(np.linalg.norm(p - q) <= dedup_tol for q, *_ in candidates):
            continue
        candidates.append((p, "newton", float(vals[i]), int(nullity[i])))
    status = "not tried (f is a Python callable, not an expression)"
    if is_expr and symbolic in ("auto", True):
        guard = (symbolic_timeout if symbolic_deadline is None
                 else min(symbolic_timeout, symbolic_deadline - time.monotonic()))
        message(f"critical points: sympy.solve of the gradient (time guard {max(guard, 0):g} s)", progress)
        sym_points, status = _symbolic_solutions(f, B, guard)
        for p in sym_points:
            for j, (q, _by, v, k) in enumerate(candidates):
                if np.linalg.norm(p - q) <= dedup_tol:
                    candidates[j] = (p, "newton+symbolic", v, k)  # exact coordinates replace Newton's
                    break
            else:
                candidates.append((p, "symbolic", math.nan, -1))
    elif is_expr:
        status = "not tried (symbolic=False)"
    points: list[CriticalPoint] = []
    sets: list[tuple[CriticalPoint, int]] = []  # non-isolated sets: (representative, nullity)
    merged = [0]
    for k, (p, by, value, null) in enumerate(candidates):
        if deadline is not None and time.monotonic() > deadline:
            notes.append(f"time limit of {time_limit:g} s reached: {len(candidates) - k} of {len(candidates)} "
                         "candidate points were not classified (raise time_limit to see them)")
            break
        on_set = next((j for j, (q, m) in enumerate(sets) if null == m and null > 0
                       and abs(value - q.value) <= 64 * _EPS * max(1.0, abs(q.value))), None)
        if on_set is not None:
            merged[0] += 1
            continue
        cp = classify(func, torch.as_tensor(p, dtype=torch.float64), higher_order=higher_order)
        if cp.kind == "not critical" or any(float((cp.x - q.x).norm()) <= dedup_tol for q in points):
            continue
        cp.found_by = by
        points.append(cp)
        if cp.kind == "non-isolated":
            sets.append((cp, cp.nullity if null < 0 else null))
    if merged[0]:
        notes.append(f"{merged[0]} further start(s) ended on critical points with the same value of f and the same "
                     "singular Hessian as a non-isolated set listed, and were merged into it (distinct sets at "
                     "the same level would be merged too)")
    points.sort(key=lambda c: (_KIND_ORDER.get(c.kind, 9), tuple(round(float(a), 9) for a in c.x)))
    if not points and not any("time limit" in m for m in notes):
        notes.append("no critical point found in the box (none may exist; try more num_starts or a larger box)")
    if deadline is not None and time.monotonic() > deadline and not any("time limit" in m for m in notes):
        notes.append(f"time limit of {time_limit:g} s reached (elapsed {time.monotonic() - start_time:.1f} s)")
    message(f"critical points: {len(points)} found ({status})", progress)
    return CriticalPointList(points, num_starts, iters, status, notes)
