"""Core benchmarks (issue 2): Hessian-vector product cost relative to a gradient, and dense Hessians.

Run: ``python benchmarks/bench_core.py [--quick] [--dense-peers]``. Prints a JSON record and a
table; writes ``benchmarks/results/core.json``. All timings are medians within one run, reported
as ratios to the gradient time measured in the same run (the machines are noisy).

HVP paths compared on each model (fp32, digits data, 512 samples, one batch):
* ``double_backward_recomputed`` — PyHessian's product recomputed at a point: loss.backward with
  create_graph, then ``autograd.grad(grads, params, v)``.
* ``double_backward_graph_kept`` — PyHessian's ``hessian_vector_product`` on a kept graph.
* ``torch_func_fwd_over_rev`` — ``jvp(grad(L))`` with ``functional_call``.
* ``hesse_single`` — ``HessianOperator(...) @ v`` including the operator's construction
  (one product at a new point).
* ``hesse_reused`` — a further ``op @ v`` on the same operator (Lanczos' situation).
* ``hesse_matmat10`` — ``op.matmat(V)`` with 10 columns, per vector.

Dense Hessian (float64 MLP): ``HessianOperator(...).to_dense()`` against ``torch.func.hessian`` and
``torch.autograd.functional.hessian(vectorize=True)``, each in its own process for peak memory.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent


def _median_time(fn, repeat: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _models(quick: bool):
    from hesse.demo_models import digits_cnn, digits_mlp

    specs = [("MLP 64-320-320-10", lambda: digits_mlp(hidden=320, depth=2), False),
             ("CNN c=72 (BatchNorm)", lambda: digits_cnn(channels=72), True)]
    if not quick:
        specs.append(("MLP 64-1024-1024-10", lambda: digits_mlp(hidden=1024, depth=2), False))
    return specs


def bench_hvp(quick: bool) -> list[dict]:
    import hesse
    from hesse.demo_models import digits_data

    rows = []
    repeat = 3 if quick else 7
    for name, make, image in _models(quick):
        torch.manual_seed(0)
        model = make().eval()
        X, y = digits_data(512, image=image)
        lf = nn.CrossEntropyLoss()
        params = [p for p in model.parameters()]
        n = sum(p.numel() for p in params)
        v = torch.randn(n)
        vs = list(torch.split(v, [p.numel() for p in params]))
        vs = [t.reshape(p.shape) for t, p in zip(vs, params)]

        def gradient():
            model.zero_grad(set_to_none=True)
            lf(model(X), y).backward()

        def double_backward():
            loss = lf(model(X), y)
            gs = torch.autograd.grad(loss, params, create_graph=True)
            return torch.autograd.grad(gs, params, vs)

        loss = lf(model(X), y)
        gs_kept = torch.autograd.grad(loss, params, create_graph=True)

        def graph_kept():
            return torch.autograd.grad(gs_kept, params, vs, retain_graph=True)

        names = [k for k, _ in model.named_parameters()]
        theta = tuple(p.detach() for p in params)

        def L(th):
            return lf(torch.func.functional_call(model, dict(zip(names, th)), (X,)), y)

        def fwd_over_rev():
            return torch.func.jvp(torch.func.grad(L), (theta,), (tuple(vs),))[1]

        def hesse_single():
            op = hesse.HessianOperator(model, lf, (X, y))
            return op @ v

        op = hesse.HessianOperator(model, lf, (X, y))
        V = torch.randn(n, 10)

        def hesse_reused():
            return op @ v

        def hesse_matmat():
            return op.matmat(V)

        # correctness first: every path gives the same product (fp32: agree to 1e-3 relative)
        ref = torch.cat([t.reshape(-1) for t in double_backward()])
        for label, out in (("hesse", op @ v),
                           ("fwd_over_rev", torch.cat([t.reshape(-1) for t in fwd_over_rev()]))):
            rel = float((out - ref).norm() / ref.norm())
            assert rel < 1e-3, (label, rel)

        t_grad = _median_time(gradient, repeat)
        row = {"model": name, "num_parameters": n, "gradient_s": t_grad}
        for key, fn, per in (
            ("double_backward_recomputed", double_backward, 1),
            ("double_backward_graph_kept", graph_kept, 1),
            ("torch_func_fwd_over_rev", fwd_over_rev, 1),
            ("hesse_single", hesse_single, 1),
            ("hesse_reused", hesse_reused, 1),
            ("hesse_matmat10_per_vector", hesse_matmat, 10),
        ):
            row[key] = _median_time(fn, repeat) / per / t_grad
        rows.append(row)
        print(f"  {name}: done", file=sys.stderr)
    return rows


def _reset_peak_rss() -> int:
    """Reset the kernel's RSS high-water mark (``VmHWM``) and return the current RSS.

    A spawned child otherwise inherits the parent's high-water mark through ``fork`` (the HVP
    benchmarks' models), which would make every dense row report the parent's peak.
    """
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    return _status_bytes("VmRSS")


def _status_bytes(key: str) -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_rss() -> int:
    return _status_bytes("VmHWM")


def _dense_worker(method: str, hidden: int, queue) -> None:
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    import hesse
    from hesse.demo_models import digits_data, digits_mlp
    from hesse.testing import flat_loss_of_model

    model = digits_mlp(hidden=hidden, depth=2, dtype=torch.float64).eval()
    X, y = digits_data(512, dtype=torch.float64)
    lf = nn.CrossEntropyLoss()
    n = sum(p.numel() for p in model.parameters())
    base = _reset_peak_rss()
    t0 = time.perf_counter()
    if method == "hesse":
        H = hesse.HessianOperator(model, lf, (X, y)).to_dense()
    else:
        L, theta = flat_loss_of_model(model, lf, X, y)
        if method == "torch.func.hessian":
            H = torch.func.hessian(L)(theta)
        else:
            H = torch.autograd.functional.hessian(L, theta, vectorize=True)
    seconds = time.perf_counter() - t0
    peak = _peak_rss()
    queue.put({"method": method, "n": n, "seconds": seconds, "peak_rss_bytes": peak,
               "baseline_rss_bytes": base, "peak_increase_bytes": peak - base,
               "checksum": float(H.double().trace())})


def bench_dense(hiddens: list[int], peers_large: bool) -> list[dict]:
    """Peers always at the smallest size; at larger sizes only with ``peers_large`` (they need
    about 14 GB at n = 7,215)."""
    ctx = mp.get_context("spawn")
    rows = []
    for hidden in hiddens:
        peers = peers_large or hidden == min(hiddens)
        methods = ["hesse"] + (["torch.func.hessian", "autograd.functional.hessian"] if peers else [])
        for method in methods:
            q = ctx.Queue()
            p = ctx.Process(target=_dense_worker, args=(method, hidden, q))
            p.start()
            p.join()
            if p.exitcode != 0:
                rows.append({"method": method, "hidden": hidden, "error": f"exit {p.exitcode}"})
                continue
            rows.append(q.get())
            print(f"  dense {method} n={rows[-1]['n']}: {rows[-1]['seconds']:.1f}s", file=sys.stderr)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dense-peers", action="store_true",
                    help="also time torch.func / autograd.functional at n = 7,215 (slow, ~14 GB)")
    ap.add_argument("--skip-dense", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    record = {"torch": torch.__version__, "threads": torch.get_num_threads(), "hvp": bench_hvp(args.quick)}
    if not args.skip_dense:
        record["dense"] = bench_dense([24] if args.quick else [24, 55], args.dense_peers)
    out = HERE / "results" / "core.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))
    print("\nHVP time / gradient time (median, same run)")
    cols = ["double_backward_recomputed", "double_backward_graph_kept", "torch_func_fwd_over_rev",
            "hesse_single", "hesse_reused", "hesse_matmat10_per_vector"]
    print("| model | n | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for r in record["hvp"]:
        print(f"| {r['model']} | {r['num_parameters']:,} | " + " | ".join(f"{r[c]:.2f}x" for c in cols) + " |")
    if "dense" in record:
        print("\nDense Hessian (float64)")
        print("| method | n | seconds | peak RSS | increase over the process before the call |")
        print("|---|---|---|---|---|")
        for r in record["dense"]:
            if "error" in r:
                print(f"| {r['method']} | hidden {r['hidden']} | {r['error']} | |")
            else:
                print(f"| {r['method']} | {r['n']:,} | {r['seconds']:.1f} | {r['peak_rss_bytes'] / 2**30:.2f} GiB "
                      f"| {r['peak_increase_bytes'] / 2**30:.2f} GiB |")


if __name__ == "__main__":
    main()
