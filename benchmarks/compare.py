"""Compare the operators' product path of two commits in one run.

Run: ``python benchmarks/compare.py REV_A REV_B [--rounds 3] [--threads 1] [--dense] [--quick]``
(``REV`` is anything ``git`` names: a commit, a branch, ``HEAD``; ``WORKTREE`` is the files as they
are now, uncommitted changes included). Each revision's ``src/`` is exported into a temporary
folder; then, round after round, one fresh process per revision (in alternating order, so that a
machine's drift hits both alike) measures every row with that revision's ``hesse`` and the same
measuring code (this file). Each row is a ratio to a hand-written PyTorch path timed in the same
process, so rows compare across processes; the table shows the median over rounds per revision and
their ratio B / A. Prints a JSON record and a table; writes ``benchmarks/results/compare.json``.

Rows (digits data, 512 samples, cross-entropy, float32 unless stated):

* ``cnn_reused`` -- a further ``op @ v`` on a built ``HessianOperator`` / the graph-kept double
  backward (``autograd.grad`` of the kept first-backward graph), CNN conv(1->16, 3x3, pad 1) tanh
  conv(16->32, 3x3, pad 1) tanh linear(2048->10), 25,290 parameters;
* ``cnn_matmat10`` -- ``op.matmat`` of 10 vectors, per vector / the graph-kept double backward;
* ``cnn_new_point`` -- building the operator and one product / the recomputed double backward
  (PyHessian's path at a new point);
* ``mlp1m_reused`` -- as ``cnn_reused`` on an MLP 64-1000-1000-10 tanh (1,076,010 parameters);
  left out with ``--quick``;
* ``dense_time`` and ``dense_memory`` (with ``--dense``) -- ``to_dense()`` of the float64 digits MLP
  64-55-55-10 (7,215 parameters) / a plain loop of graph-kept products, one per column; and the
  peak memory above the process's baseline / the matrix's own size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from bench_core import _median_time  # one timing helper for the benchmarks (this folder)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


# ---------------------------------------------------------------------------------------------
# the worker: runs in a fresh process with one revision's hesse on its path
# ---------------------------------------------------------------------------------------------

def _cnn():
    from torch import nn

    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.Tanh(), nn.Conv2d(16, 32, 3, padding=1),
                         nn.Tanh(), nn.Flatten(), nn.Linear(2048, 10))


def _mlp(hidden: int, dtype=None):
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                          nn.Linear(hidden, 10))
    return model.to(dtype or torch.float32)


def _product_rows(label: str, model, X, y, repeat: int, new_point: bool, matmat: bool) -> dict:
    import torch
    from torch import nn

    import hesse

    lf = nn.CrossEntropyLoss()
    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(n, generator=gen)
    V = torch.randn(n, 10, generator=gen)
    vs = [t.reshape(p.shape) for t, p in zip(torch.split(v, [p.numel() for p in params]), params)]

    loss = lf(model(X), y)
    kept = torch.autograd.grad(loss, params, create_graph=True)

    def graph_kept():
        return torch.autograd.grad(kept, params, vs, retain_graph=True)

    def recomputed():
        gs = torch.autograd.grad(lf(model(X), y), params, create_graph=True)
        return torch.autograd.grad(gs, params, vs)

    op = hesse.HessianOperator(model, lf, (X, y))
    ref = torch.cat([t.reshape(-1) for t in graph_kept()])
    rel = float((op @ v - ref).norm() / ref.norm())
    if not rel < 1e-4:
        raise AssertionError(f"{label}: the operator's product is off the reference by {rel:.2e}")

    base = _median_time(graph_kept, repeat, warmup=2)
    rows = {f"{label}_reused": _median_time(lambda: op @ v, repeat, warmup=2) / base}
    if matmat:
        rows[f"{label}_matmat10"] = _median_time(lambda: op.matmat(V), repeat, warmup=2) / 10 / base
    if new_point:
        rows[f"{label}_new_point"] = (_median_time(lambda: hesse.HessianOperator(model, lf, (X, y)) @ v,
                                                   repeat, warmup=2) / _median_time(recomputed, repeat, warmup=2))
    return rows


def _rss_bytes(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def _dense_rows(X64, y) -> dict:
    import torch
    from torch import nn

    import hesse

    torch.manual_seed(0)
    model = _mlp(55, torch.float64)
    lf = nn.CrossEntropyLoss()
    params = list(model.parameters())
    n = sum(p.numel() for p in params)

    def loop():
        gs = torch.autograd.grad(lf(model(X64), y), params, create_graph=True)
        cols = torch.empty(n, n, dtype=torch.float64)
        eye_chunk = torch.zeros(n, dtype=torch.float64)
        for j in range(n):
            eye_chunk.zero_()
            eye_chunk[j] = 1.0
            vs = [t.reshape(p.shape) for t, p in zip(torch.split(eye_chunk, [p.numel() for p in params]),
                                                      params)]
            hv = torch.autograd.grad(gs, params, vs, retain_graph=True)
            cols[:, j] = torch.cat([t.reshape(-1) for t in hv])
        return cols

    t0 = time.perf_counter()
    reference = loop()
    t_loop = time.perf_counter() - t0
    del reference
    with open("/proc/self/clear_refs", "w") as fh:  # reset the high-water mark to the current RSS
        fh.write("5")
    before = _rss_bytes("VmRSS")
    t0 = time.perf_counter()
    H = hesse.HessianOperator(model, lf, (X64, y)).to_dense()
    t_dense = time.perf_counter() - t0
    extra = _rss_bytes("VmHWM") - before
    return {"dense_time": t_dense / t_loop, "dense_memory": extra / (H.numel() * H.element_size())}


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from hesse.demo_models import digits_data

    repeat = 5 if args.quick else 11
    X, y = digits_data(512)
    torch.manual_seed(0)
    rows = _product_rows("cnn", _cnn(), X.reshape(-1, 1, 8, 8), y, repeat, new_point=True, matmat=True)
    if not args.quick:
        torch.manual_seed(0)
        rows.update(_product_rows("mlp1m", _mlp(1000), X, y, max(3, repeat // 2), new_point=False,
                                  matmat=False))
    if args.dense:
        rows.update(_dense_rows(X.double(), y))
    print(json.dumps(rows))


# ---------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------

def _export(rev: str, into: Path) -> Path:
    """The revision's ``src/`` in a folder of its own (``WORKTREE``: the files as they are now)."""
    into.mkdir(parents=True)
    if rev == "WORKTREE":
        return ROOT / "src"
    archive = into / "src.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), rev, "src"],
                   check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def _run_worker(src: Path, args: argparse.Namespace) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--threads", str(args.threads)]
    cmd += ["--quick"] * args.quick + ["--dense"] * args.dense
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the worker for {src} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("revs", nargs="*", metavar="REV", help="two revisions: A (before) and B (after)")
    parser.add_argument("--rounds", type=int, default=3, help="processes per revision (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    parser.add_argument("--dense", action="store_true", help="add the dense-Hessian rows (~1 min/round)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no 1M-parameter MLP")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if len(args.revs) != 2:
        parser.error("give two revisions, e.g. `compare.py main WORKTREE`")
    with tempfile.TemporaryDirectory() as tmp:
        srcs = {rev: _export(rev, Path(tmp) / f"rev{i}") for i, rev in enumerate(args.revs)}
        runs: dict[str, list[dict]] = {rev: [] for rev in args.revs}
        for r in range(args.rounds):
            order = args.revs if r % 2 == 0 else args.revs[::-1]
            for rev in order:
                runs[rev].append(_run_worker(srcs[rev], args))
                print(f"  round {r + 1}/{args.rounds}: {rev} done", file=sys.stderr)
    a, b = args.revs
    table = []
    for key in runs[a][0]:
        ma = statistics.median(run[key] for run in runs[a])
        mb = statistics.median(run[key] for run in runs[b])
        table.append({"row": key, a: ma, b: mb, "ratio_b_over_a": mb / ma,
                      "rounds": {a: [run[key] for run in runs[a]], b: [run[key] for run in runs[b]]}})
    record = {"revisions": args.revs, "threads": args.threads, "rounds": args.rounds, "rows": table}
    print(json.dumps(record, indent=1))
    print(f"\n| row | {a} | {b} | {b} / {a} |\n|---|---|---|---|")
    for row in table:
        print(f"| {row['row']} | {row[a]:.3f} | {row[b]:.3f} | {row['ratio_b_over_a']:.3f} |")
    out = HERE / "results" / "compare.json"
    out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
