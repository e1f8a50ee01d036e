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
``.sympy`` and ``.variables``): ``sympy.solve`` of ∇f = 0 in a child process that is killed at
its time guard (within ``time_limit``); real isolated solutions in the box are added and each point's ``found_by`` says
``"newton"``, ``"symbolic"`` or ``"newton+symbolic"``. Cost of the numerical route per
iteration: one batched gradient+Hessian and 13 batched gradients over the starts.
"""

from __future__ import annotations

import math
import multiprocessing
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hesse._memory import default_max_memory, format_bytes
from hesse._progress import message
from hesse._validation import call_torch_function, check_positive_int
from hesse.geometry._newton import ALPHAS as _NEWTON_TRIALS
from hesse.geometry._newton import batched_newton, newton_diagnostics, step_tolerance
from hesse.geometry.classify import SAME_LEVEL_ULPS, CriticalPoint, classify

__all__ = ["MAX_STARTS", "CriticalPointList", "critical_points", "newton_chunk_size"]

_KIND_ORDER = {"minimum": 0, "degenerate minimum": 1, "saddle": 2, "degenerate saddle": 3, "maximum": 4,
               "degenerate maximum": 5, "non-isolated": 6, "inconclusive": 7}

MAX_STARTS = 2**20
"""Most Newton starts one search takes: ~1e6 covers a 20-D box at 2 points per axis; more is a typo."""

MIN_DEFAULT_STARTS = 128
STARTS_PER_DIMENSION = 32
"""Default starts: the power of two at or above max(MIN_DEFAULT_STARTS, STARTS_PER_DIMENSION·n),
enough for the polynomial test functions of a few variables to have a start in every basin."""

HESSIAN_COPIES = 8
"""Dense n x n blocks held per start during one batched Newton iteration (the vmapped Hessian and
its intermediates, the symmetrised copy, the eigenvectors, the masked copy): the memory estimate
is starts x HESSIAN_COPIES x n² x itemsize."""

NEWTON_TIME_SHARE = 0.6
SYMBOLIC_TIME_SHARE = 0.8
"""Of ``time_limit``, Newton may use the first 60% and sympy run until 80%: classifying the
candidates (a dense Hessian each, higher-order analysis for degenerate ones) needs the rest."""

CHUNK_TIME_SHARE = 0.05
"""A chunk of Newton starts is sized to take at most 5% of ``time_limit`` per iteration, since the
deadline is checked between iterations."""

MAX_STEP_OF_DIAMETER = 0.25
"""Newton steps are capped at a quarter of the box diameter, so that a start near a flat region
is not thrown far out of the box in one step."""

BOX_MARGIN = 1e-9
"""Endpoints up to BOX_MARGIN·max(1, diameter) outside the box count as inside (a critical point
on the boundary converges to it from either side)."""

PREFILTER_GRADIENT = 1e-4
"""Endpoints with ‖∇f‖ above PREFILTER_GRADIENT·max(1, diameter) are dropped before the (more
costly) diagnostics: Newton did not converge there."""

CONVERGED_STEP_FACTOR = 1e3
"""Newton endpoints whose step is within CONVERGED_STEP_FACTOR times the location tolerance are
candidates: a loose pre-filter, since :func:`classify` applies the exact test (and polishes)."""

STALLED_GRADIENT = 1e-12
"""A start that stopped with ‖∇f‖ below this but a long Newton step is reported in a note: f is
so flat there that the gradient says nothing about the distance to a critical point."""

DEDUP_REL_TOL = 1e-5
"""Default ``dedup_tol`` relative to max(1, box diameter): points closer than this are the same
point found twice (far above the sqrt(eps) location accuracy, far below feature sizes)."""

LOOP_PROBE_ROWS = 256
"""Rows evaluated one by one to check f's finiteness when f cannot be vmapped."""

SYMBOLIC_DIGITS = 30
"""Digits of sympy's numerical evaluation of an exact solution (above float64's 16)."""

IMAGINARY_REL_TOL = 1e-12
"""A solution whose imaginary parts are below this (relative to max(1, |real part|)) is real;
sympy's numerical evaluation of radicals leaves imaginary parts of that size."""

MAX_BOX_SIDE = 1e150
"""Points of a wider box overflow float64 when squared (‖x‖², x**2 terms)."""


def _first_chunk(n: int) -> int:
    """Starts in the first Newton chunk (about 2^16 Hessian entries, at most 1024 starts); its
    measured cost sizes the next chunks (see _run_newton)."""
    return max(1, min(1024, 2**16 // (n * n)))


MAX_SYMBOLIC_EXPONENT = 40
"""sympy.solve expands powers: beyond this exponent the polynomial systems are impractical, and
the sympy process is stopped at its time guard, but the time would be spent for nothing."""


def newton_chunk_size(n: int, dtype: torch.dtype, max_memory: int | None = None) -> int:
    """How many starts one batched Newton iteration may hold within ``max_memory`` bytes (default
    the memory guard, ``HESSE_MAX_MEMORY`` or 4 GiB): max_memory / (HESSIAN_COPIES·n²·itemsize)."""
    limit = default_max_memory() if max_memory is None else int(max_memory)
    itemsize = torch.empty((), dtype=dtype).element_size()
    return int(limit // (HESSIAN_COPIES * n * n * itemsize))


class CriticalPointList(list[CriticalPoint]):
    """A list of :class:`CriticalPoint` with how it was found: ``num_starts``, ``nit`` (Newton
    iterations of the longest-running chunk), ``symbolic_status`` (what the sympy route did) and
    ``notes``."""

    def __init__(self, points: Sequence[CriticalPoint], num_starts: int, nit: int, symbolic_status: str,
                 notes: list[str]):
        super().__init__(points)
        self.num_starts, self.nit = num_starts, nit
        self.symbolic_status, self.notes = symbolic_status, notes

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self:
            out[p.kind] = out.get(p.kind, 0) + 1
        return out

    def __repr__(self) -> str:
        rows = "\n".join(f"  {p.kind:<20} x={[round(float(a), 6) for a in _coords(p)]} "
                         f"f={float(p.value if p.value is not None else math.nan):.6g} ({p.found_by})" for p in self)
        return (f"CriticalPointList({len(self)} points, counts={self.counts()}, num_starts={self.num_starts}, "
                f"symbolic={self.symbolic_status!r})\n{rows}")


def _coords(cp: CriticalPoint) -> torch.Tensor:
    """The point's coordinates (a point found in a box always has them)."""
    return cp.x if cp.x is not None else torch.empty(0)


def _check_bounds(bounds: Any) -> torch.Tensor:
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
    if not math.isfinite(diam) or diam > MAX_BOX_SIDE:
        raise ValueError(f"bounds {B.tolist()} are too wide for float64: the box's width overflows or its "
                         "points square to inf; give a box of at most about 1e150 per side.")
    return torch.as_tensor(B, dtype=torch.float64)


_EPS = float(torch.finfo(torch.float64).eps)


def _values(func: Callable[[torch.Tensor], torch.Tensor], X: torch.Tensor) -> torch.Tensor | None:
    """f at every row (vmap, else a loop over the first LOOP_PROBE_ROWS); None if f cannot be
    evaluated in a batch."""
    try:
        return torch.func.vmap(func)(X)
    except RuntimeError:
        try:
            return torch.stack([torch.as_tensor(func(x)) for x in X[:LOOP_PROBE_ROWS]])
        except (RuntimeError, ValueError):
            return None
        except TypeError as err:
            if "to NumPy" in str(err):
                raise
            return None


@dataclass
class _SymbolicSet:
    """A non-isolated solution of ∇f = 0 from sympy (``{x: 0}``: the line x = 0): its equations,
    its dimension (the number of free variables), a point of it inside the box and its text."""

    solution: dict[Any, Any]
    dimension: int
    point: np.ndarray
    text: str

    def contains(self, p: np.ndarray, symbols: Sequence[Any], tol: float) -> bool:
        """Whether ``p`` satisfies the set's equations (each solved variable equals its expression)."""
        index = {s: i for i, s in enumerate(symbols)}
        values = {s: float(p[i]) for s, i in index.items()}
        for s, expr in self.solution.items():
            try:
                target = complex(expr.subs(values))
            except (TypeError, ValueError):
                return False
            if abs(target.imag) > tol or abs(p[index[s]] - target.real) > tol * max(1.0, abs(target.real)):
                return False
        return True


#: Where a non-isolated set's free variables are placed to find a point of it in the box: fractions
#: of each free variable's interval, away from the centre, where sets of symmetric functions cross.
_SET_SAMPLE_FRACTIONS = (0.37, 0.71, 0.19, 0.88)


def _symbolic_solutions(expr: Any, B: torch.Tensor,
                        timeout: float) -> tuple[list[np.ndarray], list[_SymbolicSet], str]:
    """Real isolated solutions of ∇f = 0 inside the box by ``sympy.solve`` in a guarded process,
    and a status line."""
    import sympy  # an optional dependency, and slow to import: only the symbolic route needs it

    symbols = expr.sympy_symbols if hasattr(expr, "sympy_symbols") else tuple(
        sympy.Symbol(v, real=True) for v in expr.variables)
    if timeout <= 0:
        return [], [], "skipped (no time left within the time limit)"
    exponents = [abs(p.exp) for p in expr.sympy.atoms(sympy.Pow) if p.exp.is_number and p.exp.is_real]
    biggest = max(exponents, default=0)
    if biggest > MAX_SYMBOLIC_EXPONENT:
        return [], [], (f"skipped: an exponent of {float(biggest):g} (> {MAX_SYMBOLIC_EXPONENT}) makes symbolic "
                        "solving impractical; the Newton route ran alone")
    outcome = _solve_in_process(expr.sympy, symbols, timeout)
    if outcome is None:
        return [], [], f"timed out after {timeout:g} s (the sympy.solve process was stopped)"
    kind, value = outcome
    if kind == "err":
        return [], [], f"failed ({value[:200]})"
    return _real_points_in_box(value, symbols, B)


def _solve_gradient(e: Any, symbols: Sequence[Any], conn: Any) -> None:
    """``sympy.solve(∇e = 0)`` in a child process; sends ``("ok", solutions)`` or ``("err", message)``."""
    import sympy

    try:
        eqs = [sympy.diff(e, s) for s in symbols]
        conn.send(("ok", sympy.solve(eqs, list(symbols), dict=True)))
    except Exception as err:  # noqa: BLE001 -- sympy raises many types (NotImplementedError, PolynomialError...)
        conn.send(("err", f"{type(err).__name__}: {err}"))
    finally:
        conn.close()


def _solve_in_process(e: Any, symbols: Sequence[Any], timeout: float) -> tuple[str, Any] | None:
    """Run :func:`_solve_gradient` in a separate process and stop it at ``timeout`` (None then).

    A thread cannot be stopped: an abandoned ``sympy.solve`` would keep running and allocating (GBs)
    after the time limit. A process is killed at the limit and its memory returned. ``fork`` where
    available (no re-import of torch in the child), else ``spawn``.
    """
    methods = multiprocessing.get_all_start_methods()
    ctx: Any = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_solve_gradient, args=(e, tuple(symbols), sender), daemon=True)
    proc.start()
    sender.close()  # the child holds its own end; EOF on ours if it dies without sending
    try:
        if not receiver.poll(timeout):
            return None
        try:
            return receiver.recv()
        except EOFError:
            return "err", f"the sympy process ended without an answer (exit code {proc.exitcode})"
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()
        receiver.close()


def _set_in_box(sol: dict[Any, Any], symbols: Sequence[Any], B: torch.Tensor) -> _SymbolicSet | None:
    """The non-isolated solution ``sol`` as a :class:`_SymbolicSet` if a real point of it lies in the box."""
    import sympy

    free = [s for s in symbols if s not in sol]
    for v in sol.values():
        free += [s for s in getattr(v, "free_symbols", set()) if s in symbols and s not in free]
    lo, hi = B[:, 0].numpy(), B[:, 1].numpy()
    index = {s: i for i, s in enumerate(symbols)}
    for frac in _SET_SAMPLE_FRACTIONS:
        values = {s: lo[index[s]] + frac * (hi[index[s]] - lo[index[s]]) for s in free}
        try:
            solved = {s: complex(sympy.N(sol[s].subs(values), SYMBOLIC_DIGITS)) for s in sol}
        except (TypeError, ValueError, ZeroDivisionError):
            continue
        if any(abs(v.imag) > IMAGINARY_REL_TOL * max(1.0, abs(v.real)) for v in solved.values()):
            continue
        p = np.array([values[s] if s in values else solved[s].real for s in symbols], dtype=np.float64)
        if (p >= lo).all() and (p <= hi).all():
            text = ", ".join(f"{s} = {sympy.sstr(sol[s])}" for s in symbols if s in sol)
            return _SymbolicSet(dict(sol), len(free), p, text)
    return None


def _real_points_in_box(solutions: list[dict[Any, Any]], symbols: Sequence[Any],
                        B: torch.Tensor) -> tuple[list[np.ndarray], list[_SymbolicSet], str]:
    import sympy

    points, sets, parametric, complex_count = [], [], 0, 0
    for sol in solutions:
        if len(sol) < len(symbols) or any(getattr(v, "free_symbols", set()) for v in sol.values()):
            parametric += 1
            found = _set_in_box(sol, symbols, B)
            if found is not None:
                sets.append(found)
            continue
        try:
            vals = [complex(sympy.N(sol[s], SYMBOLIC_DIGITS)) for s in symbols]
        except (TypeError, ValueError):
            parametric += 1
            continue
        if any(abs(v.imag) > IMAGINARY_REL_TOL * max(1.0, abs(v.real)) for v in vals):
            complex_count += 1
            continue
        p = np.array([v.real for v in vals])
        lo, hi = B[:, 0].numpy(), B[:, 1].numpy()
        if (p >= lo).all() and (p <= hi).all():
            points.append(p)
    status = f"solved: {len(solutions)} solution(s), {len(points)} real in the box"
    if complex_count:
        status += f", {complex_count} complex"
    if parametric:
        status += (f", {parametric} non-isolated (a curve or surface of critical points), {len(sets)} of them "
                   "meeting the box")
    return points, sets, status


@dataclass
class _Budget:
    """The time limit of one search and its shares (see NEWTON_TIME_SHARE)."""

    time_limit: float | None
    start: float = field(default_factory=time.monotonic)

    def _at(self, share: float) -> float | None:
        return None if self.time_limit is None else self.start + share * self.time_limit

    @property
    def deadline(self) -> float | None:
        return self._at(1.0)

    @property
    def newton_deadline(self) -> float | None:
        return self._at(NEWTON_TIME_SHARE)

    @property
    def symbolic_deadline(self) -> float | None:
        return self._at(SYMBOLIC_TIME_SHARE)

    @staticmethod
    def passed(deadline: float | None) -> bool:
        return deadline is not None and time.monotonic() > deadline

    def newton_note(self, done: int, total: int) -> str:
        limit = float(self.time_limit or 0.0)
        return (f"time limit of {limit:g} s: Newton stopped at its share ({NEWTON_TIME_SHARE * limit:g} s) with "
                f"{done} of {total} starts run (raise time_limit to run them all)")


@dataclass
class _Problem:
    """What the search runs on: ``func`` of one flat tensor, and the parsed expression (with a
    sympy form and variable names) when f is one."""

    func: Callable[[torch.Tensor], torch.Tensor]
    expression: Any | None


def _check_problem(f: Any, n: int, symbolic: bool | str) -> _Problem:
    is_expr = hasattr(f, "sympy") and hasattr(f, "variables")
    func = f.function if is_expr and hasattr(f, "function") else f
    if not callable(func):
        raise TypeError(f"f must be callable (a function of one flat tensor) or a parsed expression; got "
                        f"{type(f).__name__}.")
    user_func = func

    def torch_only(x: torch.Tensor) -> torch.Tensor:  # a NumPy f is refused saying how to write it
        return call_torch_function(user_func, x)

    func = torch_only

    if is_expr and len(f.variables) != n:
        raise ValueError(f"bounds has {n} intervals but the expression has {len(f.variables)} variables "
                         f"({', '.join(f.variables)}).")
    if symbolic not in ("auto", True, False):
        raise ValueError(f"symbolic must be 'auto', True or False; got {symbolic!r}.")
    if symbolic is True and not is_expr:
        raise ValueError("symbolic=True needs an expression with a sympy form (hesse.cli.expressions."
                         "parse_expression); a Python callable has none. Use symbolic='auto' or False.")
    return _Problem(func, f if is_expr else None)


def _check_time_limit(time_limit: Any) -> None:
    if time_limit is not None and not (isinstance(time_limit, (int, float)) and time_limit > 0):
        raise ValueError(f"time_limit must be a positive number of seconds or None; got {time_limit!r}.")


def _check_num_starts(num_starts: int | None, n: int) -> int:
    if num_starts is None:
        num_starts = 2 ** math.ceil(math.log2(max(MIN_DEFAULT_STARTS, STARTS_PER_DIMENSION * n)))
    num_starts = check_positive_int(num_starts, "num_starts")
    if num_starts > MAX_STARTS:
        raise ValueError(f"num_starts={num_starts} exceeds the maximum of {MAX_STARTS}; Sobol starts this many "
                         "cover a box no better than a smaller box searched with fewer. Lower num_starts.")
    return num_starts


def _check_memory(num_starts: int, n: int, max_memory: int | None) -> int:
    """The chunk size of Newton starts within the memory guard; ValueError if none fits."""
    chunk = newton_chunk_size(n, torch.float64, max_memory)
    limit = default_max_memory() if max_memory is None else int(max_memory)
    per_start = HESSIAN_COPIES * n * n * 8
    if chunk < 1:
        raise ValueError(f"one Newton start in {n} variables holds about {format_bytes(per_start)} of dense "
                         f"Hessians, over the memory guard of {format_bytes(limit)} (HESSE_MAX_MEMORY): "
                         "num_starts cannot be served. Reduce the number of variables or raise max_memory.")
    # the iterates: current point, gradient and one trial point per backtracking step length
    iterates = num_starts * 8 * n * (2 + len(_NEWTON_TRIALS))
    if iterates > limit:
        raise ValueError(f"num_starts={num_starts} starts in {n} variables need "
                         f"{format_bytes(iterates)} for the iterates alone, "
                         f"over the memory guard of {format_bytes(limit)}; lower num_starts.")
    return chunk


def _sobol_starts(B: torch.Tensor, num_starts: int, seed: int) -> torch.Tensor:
    """``num_starts`` scrambled Sobol points in the box (a power of two keeps the balance
    properties of the sequence: ``random_base2``)."""
    from scipy.stats import qmc  # scipy.stats takes a while to import; only searches need it

    n = B.shape[0]
    sobol = qmc.Sobol(d=n, scramble=True, seed=seed)
    m = int(math.ceil(math.log2(num_starts)))
    U = torch.as_tensor(sobol.random_base2(m)[:num_starts] if 2 ** m == num_starts else sobol.random(num_starts))
    return B[:, 0] + U * (B[:, 1] - B[:, 0])


@dataclass
class _NewtonRun:
    """Rows that Newton left inside the box with a small gradient, and their diagnostics."""

    X: torch.Tensor
    gradient_norms: torch.Tensor
    values: torch.Tensor
    steps: torch.Tensor
    nullity: torch.Tensor
    nit: int


def _run_newton(func: Callable[[torch.Tensor], torch.Tensor], X0: torch.Tensor, B: torch.Tensor, *,
                max_iter: int, chunk: int, budget: _Budget, progress: bool, notes: list[str]) -> _NewtonRun:
    """Damped Newton from every start, in chunks bounded in memory (``chunk``) and in time.

    The deadline is checked between Newton iterations, so one iteration over a chunk must take a
    small part of the time limit: the first chunk is small, and its measured cost per
    start-iteration sizes the next ones (CHUNK_TIME_SHARE of the limit each)."""
    n, num_starts = X0.shape[1], X0.shape[0]
    diam = float((B[:, 1] - B[:, 0]).norm())
    max_step = diam * MAX_STEP_OF_DIAMETER
    vectorized = True
    parts: list[tuple[torch.Tensor, ...]] = []
    nit = 0
    size = min(chunk, _first_chunk(n))
    lo = 0
    while lo < num_starts:
        if budget.passed(budget.newton_deadline):
            notes.append(budget.newton_note(lo, num_starts))
            break
        part = X0[lo:lo + size]
        t0 = time.monotonic()
        try:
            if not vectorized:
                raise RuntimeError("vmap disabled")
            res = batched_newton(func, part, max_iter=max_iter, max_step=max_step, progress=progress,
                                 deadline=budget.newton_deadline)
        except RuntimeError as err:  # data-dependent control flow cannot be vmapped: loop instead
            if vectorized:
                notes.append(f"vmap failed ({str(err).splitlines()[0][:120]}); starts were run one by one")
                message(notes[-1], progress)
            vectorized = False
            res = batched_newton(func, part, max_iter=max_iter, max_step=max_step, progress=progress,
                                 vectorized=False, deadline=budget.newton_deadline)
        lo += len(part)
        per_start_iteration = (time.monotonic() - t0) / max(1, res[2] * len(part))
        if budget.time_limit is not None:
            size = int(min(chunk, max(1, CHUNK_TIME_SHARE * budget.time_limit / max(per_start_iteration, 1e-9))))
        else:
            size = chunk
        Xp, gp, it = res
        nit = max(nit, it)
        margin = BOX_MARGIN * max(1.0, diam)
        inside = ((Xp >= B[:, 0] - margin) & (Xp <= B[:, 1] + margin)).all(1) & torch.isfinite(Xp).all(1)
        keep = inside & torch.isfinite(gp) & (gp <= PREFILTER_GRADIENT * max(1.0, diam))
        Xk = Xp[keep]
        if len(Xk):
            vals, steps, nullity = newton_diagnostics(func, Xk.detach(), vectorized=vectorized)
            parts.append((Xk, gp[keep], vals, steps, nullity))
        if budget.passed(budget.newton_deadline) and lo < num_starts:
            notes.append(budget.newton_note(lo, num_starts))
            break
    if parts:
        X, gnorm, vals, steps, nullity = (torch.cat(t) for t in zip(*parts))
    else:
        X = torch.empty(0, n, dtype=torch.float64)
        gnorm = vals = steps = torch.empty(0, dtype=torch.float64)
        nullity = torch.empty(0, dtype=torch.long)
    return _NewtonRun(X, gnorm, vals, steps, nullity, nit)


# A candidate critical point: coordinates, route that found it, f there (nan if unknown) and the
# nullity of the Hessian (-1 if unknown).
_Candidate = tuple[np.ndarray, str, float, int]


def _newton_candidates(run: _NewtonRun, dedup_tol: float, notes: list[str]) -> list[_Candidate]:
    """Converged Newton endpoints, best gradient first, closer than ``dedup_tol`` merged."""
    X, gnorm, steps = run.X, run.gradient_norms, run.steps
    converged = steps <= CONVERGED_STEP_FACTOR * step_tolerance(X)  # classify applies the exact test
    flat_stop = ~converged & (gnorm <= STALLED_GRADIENT)
    stalled = int(flat_stop.sum())
    if stalled:
        j = int(torch.nonzero(flat_stop)[0])
        notes.append(f"{stalled} start(s) stopped where ‖∇f‖ is tiny but the Newton step is still long (e.g. at "
                     f"{[round(float(a), 4) for a in X[j]]}, step {float(steps[j]):.2g}): f is very flat there on "
                     "its own scale; a high-order degenerate critical point may lie nearby (try more max_iter)")
    candidates: list[_Candidate] = []
    for i in torch.argsort(gnorm).tolist():
        if not bool(converged[i]):
            continue
        p = X[i].numpy()
        if any(np.linalg.norm(p - q) <= dedup_tol for q, *_ in candidates):
            continue
        candidates.append((p, "newton", float(run.values[i]), int(run.nullity[i])))
    return candidates


def _add_symbolic(candidates: list[_Candidate], points: list[np.ndarray], dedup_tol: float) -> None:
    """Merge sympy's points into ``candidates``: exact coordinates replace a Newton point within
    ``dedup_tol``; the others are added."""
    for p in points:
        for j, (q, _by, v, k) in enumerate(candidates):
            if np.linalg.norm(p - q) <= dedup_tol:
                candidates[j] = (p, "newton+symbolic", v, k)
                break
        else:
            candidates.append((p, "symbolic", math.nan, -1))


def _symbols(expr: Any) -> tuple[Any, ...]:
    import sympy

    return expr.sympy_symbols if hasattr(expr, "sympy_symbols") else tuple(
        sympy.Symbol(v, real=True) for v in expr.variables)


def _add_symbolic_sets(candidates: list[_Candidate], sets: list[_SymbolicSet], symbols: Sequence[Any],
                       dedup_tol: float, notes: list[str]) -> list[_Candidate]:
    """One candidate per non-isolated set sympy found (its point in the box, listed first); the
    candidates lying on one of the sets are part of it and dropped (a note says how many)."""
    if not sets:
        return candidates
    kept = [c for c in candidates if not any(st.contains(c[0], symbols, dedup_tol) for st in sets)]
    if len(kept) < len(candidates):
        notes.append(f"{len(candidates) - len(kept)} point(s) found on the non-isolated critical set(s) were "
                     "counted as part of them")
    return [(st.point, "symbolic", math.nan, -1) for st in sets] + kept


def _name_symbolic_sets(points: list[CriticalPoint], sets: list[_SymbolicSet], symbols: Sequence[Any],
                        dedup_tol: float) -> None:
    """A point standing for a sympy set is the set: kind ``"non-isolated"``, its equations in ``reason``."""
    named: set[int] = set()
    for st in sets:
        for i, cp in enumerate(points):
            if (i not in named and cp.found_by == "symbolic" and cp.x is not None
                    and st.contains(cp.x.detach().numpy(), symbols, dedup_tol)):
                named.add(i)
                shape = {1: "a curve", 2: "a surface"}.get(st.dimension, f"a {st.dimension}-dimensional set")
                cp.kind = "non-isolated"
                cp.reason = (f"sympy: {shape} of critical points, {st.text}, passing through the box (shown: one "
                             f"point of it). " + cp.reason)
                break


def _classify_candidates(func: Callable[[torch.Tensor], torch.Tensor], candidates: list[_Candidate], *,
                         dedup_tol: float, higher_order: bool, budget: _Budget,
                         notes: list[str]) -> list[CriticalPoint]:
    """Classify each candidate; those on a non-isolated set already listed (same value of f, same
    singular Hessian rank) are merged into it instead."""
    points: list[CriticalPoint] = []
    coords: list[torch.Tensor] = []
    sets: list[tuple[float, int]] = []  # non-isolated sets: (value of f, nullity)
    merged = 0
    for k, (p, by, value, null) in enumerate(candidates):
        if budget.passed(budget.deadline):
            notes.append(f"time limit of {budget.time_limit:g} s reached: {len(candidates) - k} of "
                         f"{len(candidates)} candidate points were not classified (raise time_limit to see them)")
            break
        if null > 0 and any(null == m and abs(value - v) <= SAME_LEVEL_ULPS * _EPS * max(1.0, abs(v))
                            for v, m in sets):
            merged += 1
            continue
        x = torch.as_tensor(p, dtype=torch.float64)
        cp = classify(func, x, higher_order=higher_order)
        cx = cp.x if cp.x is not None else x
        if cp.kind == "not critical" or any(float((cx - q).norm()) <= dedup_tol for q in coords):
            continue
        cp.found_by = by
        points.append(cp)
        coords.append(cx)
        if cp.kind == "non-isolated":
            sets.append((float(cp.value if cp.value is not None else value),
                         int(cp.nullity or 0) if null < 0 else null))
    if merged:
        notes.append(f"{merged} further start(s) ended on critical points with the same value of f and the same "
                     "singular Hessian as a non-isolated set listed, and were merged into it (distinct sets at "
                     "the same level would be merged too)")
    return points


def _sort_key(cp: CriticalPoint) -> tuple[int, tuple[float, ...]]:
    return _KIND_ORDER.get(cp.kind, len(_KIND_ORDER)), tuple(round(float(a), 9) for a in _coords(cp))


def critical_points(f: Callable[[torch.Tensor], torch.Tensor] | Any, bounds: Sequence[tuple[float, float]], *,
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
    _check_time_limit(time_limit)
    budget = _Budget(None if time_limit is None else float(time_limit))
    B = _check_bounds(bounds)
    n = B.shape[0]
    problem = _check_problem(f, n, symbolic)
    max_iter = check_positive_int(max_iter, "max_iter")
    num_starts = _check_num_starts(num_starts, n)
    chunk = _check_memory(num_starts, n, max_memory)
    diam = float((B[:, 1] - B[:, 0]).norm())
    dedup_tol = DEDUP_REL_TOL * max(1.0, diam) if dedup_tol is None else float(dedup_tol)
    notes: list[str] = []

    X0 = _sobol_starts(B, num_starts, seed)
    message(f"critical points: damped Newton from {num_starts} Sobol starts in {n}-D box"
            + (f" (chunks of at most {chunk} within the memory guard)" if chunk < num_starts else ""),
            progress)
    _check_finite_somewhere(problem.func, X0, B)
    run = _run_newton(problem.func, X0, B, max_iter=max_iter, chunk=chunk, budget=budget, progress=progress,
                      notes=notes)
    candidates = _newton_candidates(run, dedup_tol, notes)
    status = "not tried (f is a Python callable, not an expression)"
    sym_sets: list[_SymbolicSet] = []
    if problem.expression is not None and symbolic in ("auto", True):
        symbolic_deadline = budget.symbolic_deadline
        guard = (symbolic_timeout if symbolic_deadline is None
                 else min(symbolic_timeout, symbolic_deadline - time.monotonic()))
        message(f"critical points: sympy.solve of the gradient (time guard {max(guard, 0):g} s)", progress)
        sym_points, sym_sets, status = _symbolic_solutions(problem.expression, B, guard)
        if guard < symbolic_timeout and status.startswith("timed out"):  # the whole run's limit bound
            status += f", at what remained of the time limit of {time_limit:g} s"
        _add_symbolic(candidates, sym_points, dedup_tol)
        candidates = _add_symbolic_sets(candidates, sym_sets, _symbols(problem.expression), dedup_tol, notes)
    elif problem.expression is not None:
        status = "not tried (symbolic=False)"
    points = _classify_candidates(problem.func, candidates, dedup_tol=dedup_tol, higher_order=higher_order,
                                  budget=budget, notes=notes)
    if sym_sets:
        _name_symbolic_sets(points, sym_sets, _symbols(problem.expression), dedup_tol)
    points.sort(key=_sort_key)
    _final_notes(points, notes, budget)
    message(f"critical points: {len(points)} found ({status})", progress)
    return CriticalPointList(points, num_starts, run.nit, status, notes)


def _check_finite_somewhere(func: Callable[[torch.Tensor], torch.Tensor], X0: torch.Tensor,
                            B: torch.Tensor) -> None:
    with torch.no_grad():
        F0 = _values(func, X0)
    if F0 is not None and not bool(torch.isfinite(F0).any()):
        raise ValueError(f"f is not finite at any of the {len(X0)} starts in the box (bounds "
                         f"{B.tolist()}): the box is too large for float64 or f is undefined there.")


def _final_notes(points: list[CriticalPoint], notes: list[str], budget: _Budget) -> None:
    timed_out = any("time limit" in m for m in notes)
    if not points and not timed_out:
        notes.append("no critical point found in the box (none may exist; try more num_starts or a larger box)")
    if budget.passed(budget.deadline) and not any("time limit" in m for m in notes):
        notes.append(f"time limit of {budget.time_limit:g} s reached "
                     f"(elapsed {time.monotonic() - budget.start:.1f} s)")
