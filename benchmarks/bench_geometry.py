"""hesse.critical_points / hesse.classify against what a user would otherwise write, in one run.

1. Finding all critical points in a box. Peer: scipy.optimize.root (MINPACK hybrj, Jacobian = the
   Hessian) on ∇f = 0 from the SAME Sobol starts in a Python loop, deduplicated the same way, and
   sympy.solve of ∇f = 0 (where it finishes). Reported: points found (vs the known count), wall time,
   time ratio scipy / hesse.
   Problems: the seeds' quartic x⁴+y⁴-2x²-2y²+1 (9 points), Himmelblau (9 points: 4 minima,
   1 maximum, 4 saddles), a separable 3-D quartic (27 points), x²y + sin(xy) (2 points).
2. Classifying degenerate critical points. Peer: the second-derivative test by eigenvalues (seeds,
   and what numpy.linalg.eigvalsh + sign checks give): counts decided correctly on a fixed set with
   known answers, including cases where straight-line tests mislead.

torch runs with 1 thread (the shared 2-core machine). Run: .venv/bin/python benchmarks/bench_geometry.py
Writes benchmarks/results/geometry.json.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import scipy.optimize as so
import torch
from scipy.stats import qmc

import hesse
from hesse.cli.expressions import parse_expression

torch.set_num_threads(1)

PROBLEMS = [
    ("seed quartic", "x**4 + y**4 - 2*x**2 - 2*y**2 + 1", [(-2, 2), (-2, 2)], 9),
    ("Himmelblau", "(x**2 + y - 11)**2 + (x + y**2 - 7)**2", [(-5, 5), (-5, 5)], 9),
    ("3-D quartic", "x**2 - x**4/2 + y**2 - y**4/2 + z**2 - z**4/2", [(-2, 2)] * 3, 27),
    ("x²y + sin(xy)", "x**2*y + sin(x*y)", [(-2, 2), (-2, 2)], 2),
]


def scipy_multistart(e, bounds, num_starts, seed=0):
    """The peer: scipy.optimize.root(method='hybr') from each Sobol start, deduplicated."""
    f = e.function
    grad = torch.func.grad(f)
    hess = torch.func.hessian(f)
    B = np.asarray(bounds, float)
    n = len(bounds)
    U = qmc.Sobol(d=n, scramble=True, seed=seed).random_base2(int(math.log2(num_starts)))
    X0 = B[:, 0] + U * (B[:, 1] - B[:, 0])
    found = []
    diam = float(np.linalg.norm(B[:, 1] - B[:, 0]))
    for x0 in X0:
        r = so.root(lambda x: grad(torch.as_tensor(x)).numpy(), x0,
                    jac=lambda x: hess(torch.as_tensor(x)).numpy(), method="hybr")
        x = r.x
        if not r.success or not ((x >= B[:, 0]) & (x <= B[:, 1])).all():
            continue
        if np.linalg.norm(grad(torch.as_tensor(x)).numpy()) > 1e-8:
            continue
        if all(np.linalg.norm(x - q) > 1e-5 * max(1, diam) for q in found):
            found.append(x)
    return found


def sympy_solve(e, timeout=20.0):
    import threading

    import sympy

    box = {}

    def work():
        box["sol"] = sympy.solve([sympy.diff(e.sympy, s) for s in e.sympy_symbols], list(e.sympy_symbols), dict=True)

    t = time.perf_counter()
    th = threading.Thread(target=work, daemon=True)
    th.start()
    th.join(timeout)
    dt = time.perf_counter() - t
    if th.is_alive():
        return None, dt
    real = 0
    for s in box["sol"]:
        try:
            vals = [complex(sympy.N(s[v])) for v in e.sympy_symbols]
        except (TypeError, KeyError):
            continue
        real += all(abs(v.imag) < 1e-12 for v in vals)
    return real, dt


def part1(num_starts=128):
    rows = []
    for name, text, bounds, known in PROBLEMS:
        e = parse_expression(text)
        hesse.critical_points(e.function, bounds, num_starts=8, progress=False)  # warm-up
        t = time.perf_counter()
        pts = hesse.critical_points(e.function, bounds, num_starts=num_starts, symbolic=False, progress=False)
        t_hesse = time.perf_counter() - t
        t = time.perf_counter()
        peer = scipy_multistart(e, bounds, num_starts)
        t_scipy = time.perf_counter() - t
        n_sym, t_sym = sympy_solve(e)
        rows.append({"problem": name, "known": known, "starts": num_starts,
                     "hesse_found": len(pts), "hesse_s": t_hesse, "hesse_counts": pts.counts(),
                     "scipy_found": len(peer), "scipy_s": t_scipy, "time_ratio_scipy_over_hesse": t_scipy / t_hesse,
                     "sympy_real_solutions": n_sym, "sympy_s": t_sym})
    return rows


DEGENERATE = [  # (name, f, n, true kind)
    ("x⁴ + y²", lambda p: p[0] ** 4 + p[1] ** 2, 2, "minimum"),
    ("x⁴ + y⁴", lambda p: p[0] ** 4 + p[1] ** 4, 2, "minimum"),
    ("-x⁴ - y²", lambda p: -p[0] ** 4 - p[1] ** 2, 2, "maximum"),
    ("x⁴ - y⁴", lambda p: p[0] ** 4 - p[1] ** 4, 2, "saddle"),
    ("x² + y³", lambda p: p[0] ** 2 + p[1] ** 3, 2, "saddle"),
    ("monkey x³ - 3xy²", lambda p: p[0] ** 3 - 3 * p[0] * p[1] ** 2, 2, "saddle"),
    ("(y - x²)² - x⁴/2", lambda p: (p[1] - p[0] ** 2) ** 2 - p[0] ** 4 / 2, 2, "saddle"),
    ("Peano (y - x²)(y - 2x²)", lambda p: (p[1] - p[0] ** 2) * (p[1] - 2 * p[0] ** 2), 2, "saddle"),
    ("(z - x² - y²)² - (x² + y²)²/2", lambda p: (p[2] - p[0] ** 2 - p[1] ** 2) ** 2 - (p[0] ** 2 + p[1] ** 2) ** 2 / 2, 3,
     "saddle"),
    ("x⁴ - y⁶", lambda p: p[0] ** 4 - p[1] ** 6, 2, "saddle"),
    ("x⁴ + y⁶", lambda p: p[0] ** 4 + p[1] ** 6, 2, "minimum"),
]


def straight_line_test(f, n, samples=400):
    """What a user checking straight lines would conclude: sign of f(t d) - f(0) for small t."""
    g = torch.Generator().manual_seed(0)
    D = torch.randn(samples, n, generator=g, dtype=torch.float64)
    D = torch.cat([D, torch.eye(n, dtype=torch.float64)])
    D = D / D.norm(dim=1, keepdim=True)
    vals = torch.stack([f(t * d) for d in D for t in (1e-3, -1e-3)])
    if bool((vals > 0).all()):
        return "minimum"
    if bool((vals < 0).all()):
        return "maximum"
    return "saddle"


def part2():
    rows = []
    for name, f, n, truth in DEGENERATE:
        x0 = torch.zeros(n, dtype=torch.float64)
        t = time.perf_counter()
        cp = hesse.classify(f, x0)
        dt = time.perf_counter() - t
        lam = np.linalg.eigvalsh(hesse.hessian(f, x0).numpy())
        tol = 1e-8
        eig = "minimum" if (lam > tol).all() else "maximum" if (lam < -tol).all() else "saddle" if (
            (lam > tol).any() and (lam < -tol).any()) else "inconclusive"
        kind = cp.kind.replace("degenerate ", "")
        rows.append({"function": name, "truth": truth, "hesse": cp.kind, "hesse_correct": kind == truth,
                     "hesse_wrong": kind not in (truth, "inconclusive"), "hesse_s": dt,
                     "eigenvalue_test": eig, "straight_lines": straight_line_test(f, n),
                     "straight_lines_correct": straight_line_test(f, n) == truth})
    return rows


def main():
    p1 = part1()
    p2 = part2()
    out = {"critical_points": p1, "degenerate_classification": p2,
           "summary": {"hesse_correct": sum(r["hesse_correct"] for r in p2),
                       "hesse_wrong": sum(r["hesse_wrong"] for r in p2),
                       "eigenvalue_test_correct": sum(r["eigenvalue_test"] == r["truth"] for r in p2),
                       "straight_lines_correct": sum(r["straight_lines_correct"] for r in p2),
                       "cases": len(p2)}}
    print(json.dumps(out, indent=1, default=str))
    print("\n| problem | known | hesse found | hesse s | scipy root found | scipy s | scipy/hesse time | sympy real sols (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in p1:
        sym = "timeout" if r["sympy_real_solutions"] is None else r["sympy_real_solutions"]
        print(f"| {r['problem']} | {r['known']} | {r['hesse_found']} | {r['hesse_s']:.2f} | {r['scipy_found']} | "
              f"{r['scipy_s']:.2f} | {r['time_ratio_scipy_over_hesse']:.2f}x | {sym} ({r['sympy_s']:.1f}) |")
    print("\n| function | truth | hesse | eigenvalue test | straight lines |")
    print("|---|---|---|---|---|")
    for r in p2:
        print(f"| {r['function']} | {r['truth']} | {r['hesse']} | {r['eigenvalue_test']} | {r['straight_lines']} |")
    s = out["summary"]
    print(f"\ncorrect of {s['cases']}: hesse {s['hesse_correct']} (wrong {s['hesse_wrong']}), eigenvalue test "
          f"{s['eigenvalue_test_correct']}, straight lines {s['straight_lines_correct']}")
    path = Path(__file__).parent / "results" / "geometry.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
