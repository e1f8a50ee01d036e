"""Scale benchmarks (issue 8): HVP time and memory from 10^4 to 10^7 parameters, the top eigenvalue
of a 10^7-parameter model against PyHessian, and 1 against 2 data-parallel processes (gloo).

Run: ``python benchmarks/bench_scale.py [--quick]``. Prints a JSON record and a table; writes
``benchmarks/results/scale.json``. Every measurement runs in its own child process so that its
peak resident memory is its own: the child builds model and data, resets the kernel's high-water
mark (``echo 5 > /proc/self/clear_refs``), does the work, and reports ``VmHWM - VmRSS(before)``,
i.e. the extra peak memory of the work above the model and the data.

Models: digits MLPs ``64 -> w -> w -> 10`` (tanh, float32) with ``w`` chosen for about 10^4, 10^5,
10^6 and 10^7 parameters, cross-entropy on 512 digits (one batch). Times are medians; this
machine has 2 shared CPU cores, so compare the ratios within one run. Every child uses one thread
(``torch.set_num_threads(1)``) except the "1 process x 2 threads" row: with other work on the two
cores, two threads per process were measured slower and far noisier than one.

* ``scale``: per n, one training step (forward + backward, the model's own cost) against one
  Hessian-vector product of ``hesse.HessianOperator`` (graph kept: one further backward per
  product) and the operator's construction (forward + backward with ``create_graph``).
* ``top_eigenvalue``: n = 10^7; ``hesse.eigsh(op, k=1, tol=1e-4)`` (Krylov-Schur),
  the same with ``low_memory=True`` (tridiagonal only, eigenvector recomputed in a second pass),
  and ``pyhessian.hessian(model, criterion, data=(X, y), cuda=False).eigenvalues(top_n=1)``
  (power iteration, its defaults maxIter=100, tol=1e-3). Accuracy: the relative residual
  ``||H v - lambda v|| / |lambda|`` of each returned pair, from one extra product (not timed).
* ``data_parallel``: one HVP on a fixed data set (1,536 digits requested; the training split
  has 1,500, MLP w = 960, about 10^6
  parameters) in 1 process (1 and 2 threads) and in 2 gloo processes with 1 thread each holding
  half of the data.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WIDTHS = {"1e4": 70, "1e5": 280, "1e6": 960, "1e7": 3125}


# --------------------------------------------------------------------------- child side
def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _reset_peak() -> int:
    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return _status("VmRSS")


def _problem(width: int, num_samples: int):
    import torch

    from hesse.demo_models import digits_data, digits_mlp

    X, y = digits_data(num_samples, dtype=torch.float32)
    model = digits_mlp(hidden=width, depth=2, seed=0, dtype=torch.float32)
    return model, torch.nn.CrossEntropyLoss(), X, y


def _median(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def child_train(width: int, repeat: int) -> dict:
    model, loss_fn, X, y = _problem(width, 512)
    rss0 = _reset_peak()

    def step():
        model.zero_grad(set_to_none=True)
        loss_fn(model(X), y).backward()

    t = _median(step, repeat)
    return {"seconds": t, "peak_extra_bytes": _status("VmHWM") - rss0,
            "num_parameters": sum(p.numel() for p in model.parameters())}


def child_hvp(width: int, repeat: int) -> dict:
    import torch

    import hesse

    model, loss_fn, X, y = _problem(width, 512)
    n = sum(p.numel() for p in model.parameters())
    v = torch.randn(n, generator=torch.Generator().manual_seed(0))
    rss0 = _reset_peak()
    t0 = time.perf_counter()
    op = hesse.HessianOperator(model, loss_fn, (X, y))
    construct = time.perf_counter() - t0
    t = _median(lambda: op.matvec(v), repeat)
    return {"seconds": t, "construct_seconds": construct, "peak_extra_bytes": _status("VmHWM") - rss0,
            "num_parameters": n}


def _relative_residual(op, value: float, vector) -> float:
    vector = vector / vector.norm()
    return float((op.matvec(vector) - value * vector).norm() / abs(value))


def child_eig(width: int, method: str, num_samples: int) -> dict:
    import warnings

    import torch

    import hesse

    model, loss_fn, X, y = _problem(width, num_samples)
    rss0 = _reset_peak()
    t0 = time.perf_counter()
    if method == "pyhessian":
        from pyhessian import hessian as PyHessian

        pyhessian_module = sys.modules["pyhessian.hessian"]  # the package attribute is the class

        calls = [0]
        product = pyhessian_module.hessian_vector_product

        def counted(*a, **kw):  # count PyHessian's products (it does not report them)
            calls[0] += 1
            return product(*a, **kw)

        pyhessian_module.hessian_vector_product = counted
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            h = PyHessian(model, loss_fn, data=(X, y), cuda=False)
            values, vectors = h.eigenvalues(top_n=1)
        seconds = time.perf_counter() - t0
        peak = _status("VmHWM") - rss0
        value = float(values[0])
        vector = torch.cat([t.reshape(-1) for t in vectors[0]]).detach()
        products = calls[0]
    else:
        op = hesse.HessianOperator(model, loss_fn, (X, y))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = hesse.eigsh(op, k=1, tol=1e-4, seed=0, low_memory=(method == "hesse_low_memory"))
        seconds = time.perf_counter() - t0
        peak = _status("VmHWM") - rss0
        value, vector, products = float(res.values[0]), res.vectors[:, 0], res.num_matvecs
    check = hesse.HessianOperator(model, loss_fn, (X, y))
    return {"seconds": seconds, "peak_extra_bytes": peak, "value": value, "num_matvecs": products,
            "relative_residual": _relative_residual(check, value, vector),
            "num_parameters": sum(p.numel() for p in model.parameters())}


def child_dp(width: int, num_samples: int, repeat: int, rank: int, world: int, init: str) -> dict:
    import torch
    import torch.distributed as dist

    import hesse

    model, loss_fn, X, y = _problem(width, num_samples)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
        X, y = hesse.distributed.shard(X, y)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hesse.distributed.DataParallelNotice)
        op = hesse.HessianOperator(model, loss_fn, (X, y))
    v = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(0))
    op.matvec(v)
    if world > 1:
        dist.barrier()
    t = _median(lambda: op.matvec(v), repeat)
    out = {"seconds": t, "num_samples": op.num_samples, "local_samples": int(X.shape[0]),
           "check": float(op.matvec(v).double().norm())}
    if world > 1:
        dist.destroy_process_group()
    return out


def child_main(argv: list[str]) -> None:
    spec = json.loads(argv[0])
    import torch

    torch.set_num_threads(spec.pop("threads", 1))
    task = spec.pop("task")
    fn = {"train": child_train, "hvp": child_hvp, "eig": child_eig, "dp": child_dp}[task]
    print("RESULT " + json.dumps(fn(**spec)), flush=True)


# --------------------------------------------------------------------------- parent side
def run_child(spec: dict, timeout: float = 1800) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(spec.get("threads", 1)))
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                         text=True, env=env, timeout=timeout)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"child {spec} failed:\n{out.stderr[-3000:]}")


def run_parallel(spec: dict, world: int, timeout: float = 900) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, OMP_NUM_THREADS=str(spec.get("threads", 1)))
        procs = []
        for r in range(world):
            s = dict(spec, rank=r, world=world, init=f"{tmp}/rendezvous")
            procs.append(subprocess.Popen([sys.executable, __file__, "--child", json.dumps(s)],
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
        results = []
        for p in procs:
            stdout, stderr = p.communicate(timeout=timeout)
            line = next((x for x in stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                raise RuntimeError(f"rank failed:\n{stderr[-3000:]}")
            results.append(json.loads(line[7:]))
        return results


def mib(b: float) -> str:
    return f"{b / 2**20:,.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="up to 10^6 parameters, fewer repeats")
    parser.add_argument("--skip", nargs="*", default=[], choices=["scale", "top_eigenvalue", "data_parallel"])
    parser.add_argument("--out", default=str(HERE / "results" / "scale.json"), help="where to write the JSON record")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main([args.child])
        return
    sizes = ["1e4", "1e5", "1e6"] + ([] if args.quick else ["1e7"])
    repeat = 3 if args.quick else 5
    record: dict = {"machine": f"{os.cpu_count()} CPUs (shared)", "quick": args.quick}

    if "scale" not in args.skip:
        rows = []
        for size in sizes:
            w = WIDTHS[size]
            train = run_child({"task": "train", "width": w, "repeat": repeat})
            hvp = run_child({"task": "hvp", "width": w, "repeat": repeat})
            rows.append({"n": hvp["num_parameters"], "width": w,
                         "train_step_s": train["seconds"], "hvp_s": hvp["seconds"],
                         "construct_s": hvp["construct_seconds"],
                         "train_peak_extra_bytes": train["peak_extra_bytes"],
                         "hvp_peak_extra_bytes": hvp["peak_extra_bytes"],
                         "hvp_over_train_time": hvp["seconds"] / train["seconds"],
                         "hvp_over_train_memory": hvp["peak_extra_bytes"] / max(train["peak_extra_bytes"], 1),
                         "hvp_bytes_per_parameter": hvp["peak_extra_bytes"] / hvp["num_parameters"]})
            print(f"scale n={rows[-1]['n']:,}: hvp {hvp['seconds']:.4f}s, train {train['seconds']:.4f}s",
                  file=sys.stderr, flush=True)
        record["scale"] = rows

    if "top_eigenvalue" not in args.skip:
        size = sizes[-1]
        w, num_samples = WIDTHS[size], 512
        eig = {}
        for method in ("hesse", "hesse_low_memory", "pyhessian"):
            eig[method] = run_child({"task": "eig", "width": w, "method": method, "num_samples": num_samples})
            print(f"top eigenvalue {method}: {eig[method]['seconds']:.1f}s", file=sys.stderr, flush=True)
        record["top_eigenvalue"] = {"n": eig["hesse"]["num_parameters"], "num_samples": num_samples, **eig,
                                    "time_ratio_pyhessian_over_hesse": eig["pyhessian"]["seconds"] / eig["hesse"]["seconds"],
                                    "memory_ratio_pyhessian_over_hesse":
                                        eig["pyhessian"]["peak_extra_bytes"] / eig["hesse"]["peak_extra_bytes"]}

    if "data_parallel" not in args.skip:
        spec = {"task": "dp", "width": 960, "num_samples": 1536, "repeat": repeat}
        one_1 = run_child(dict(spec, threads=1, rank=0, world=1, init=""))
        one_2 = run_child(dict(spec, threads=2, rank=0, world=1, init=""))
        two = run_parallel(dict(spec, threads=1), world=2)
        t2 = max(r["seconds"] for r in two)
        record["data_parallel"] = {
            "n": 994570, "num_samples": one_1["num_samples"], "one_process_1_thread_s": one_1["seconds"],
            "one_process_2_threads_s": one_2["seconds"], "two_processes_1_thread_s": t2,
            "speedup_vs_1_thread": one_1["seconds"] / t2, "speedup_vs_2_threads": one_2["seconds"] / t2,
            "same_product": abs(two[0]["check"] - one_1["check"]) / one_1["check"],
            "local_samples": [r["local_samples"] for r in two]}

    print(json.dumps(record, indent=2))
    print()
    if "scale" in record:
        print("| n | train step | HVP | HVP / train | construct | train peak extra | HVP peak extra | ratio | bytes/param |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in record["scale"]:
            print(f"| {r['n']:,} | {r['train_step_s']*1e3:.1f} ms | {r['hvp_s']*1e3:.1f} ms | {r['hvp_over_train_time']:.2f}x "
                  f"| {r['construct_s']*1e3:.1f} ms | {mib(r['train_peak_extra_bytes'])} | {mib(r['hvp_peak_extra_bytes'])} "
                  f"| {r['hvp_over_train_memory']:.2f}x | {r['hvp_bytes_per_parameter']:.1f} |")
    if "top_eigenvalue" in record:
        te = record["top_eigenvalue"]
        print(f"\ntop eigenvalue, n = {te['n']:,}, {te['num_samples']} samples")
        print("| method | time | peak extra memory | lambda_1 | products | relative residual |")
        print("|---|---|---|---|---|---|")
        for m in ("hesse", "hesse_low_memory", "pyhessian"):
            e = te[m]
            print(f"| {m} | {e['seconds']:.1f} s | {mib(e['peak_extra_bytes'])} | {e['value']:.6g} "
                  f"| {e['num_matvecs'] if e['num_matvecs'] is not None else 'n/a'} | {e['relative_residual']:.1e} |")
    if "data_parallel" in record:
        dp = record["data_parallel"]
        print(f"\none HVP, {dp['num_samples']:,} samples, w=960: 1 proc x 1 thread {dp['one_process_1_thread_s']*1e3:.0f} ms, "
              f"1 proc x 2 threads {dp['one_process_2_threads_s']*1e3:.0f} ms, 2 procs x 1 thread "
              f"{dp['two_processes_1_thread_s']*1e3:.0f} ms: speed-up {dp['speedup_vs_1_thread']:.2f}x "
              f"(vs 1 thread), {dp['speedup_vs_2_threads']:.2f}x (vs 2 threads)")
    out = Path(args.out)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
