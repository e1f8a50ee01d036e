"""Second-order optimizers of hesse.optim against SGD with momentum and Adam on digits.

One run, same seeds, same data order, same budget (EPOCHS epochs of mini-batches of BATCH, and a
wall-time cap per run) for every optimizer, on an MLP (digits_mlp, 3,466 parameters) and a small
CNN (digits_cnn, BatchNorm). Each optimizer's learning rate is chosen from a small grid (the same
number of tries for every method, Adam and SGD included) by the final full-batch training loss.
Reports the final training loss, the loss reached within Adam's wall time, steps needed to reach
Adam's final training loss, held-out test accuracy (digits_data(test=True)) and median time per
step; writes benchmarks/results/optim.json and optim.png (curves).

Run: .venv/bin/python benchmarks/bench_optim.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from hesse.demo_models import digits_cnn, digits_data, digits_mlp
from hesse.optim import KFAC, SAM, AdaHessian, HessianFree, NaturalGradient, Shampoo

RESULTS = Path(__file__).parent / "results"
BATCH = 128


def make(name: str, model: nn.Module, lr: float, loss_fn: nn.Module):
    p = model.parameters()
    if name == "SGD-momentum":
        return torch.optim.SGD(p, lr=lr, momentum=0.9)
    if name == "Adam":
        return torch.optim.Adam(p, lr=lr)
    if name == "KFAC":
        # statistics every 5 steps, inverses every 10 (Martens & Grosse 2015, sec. 8: T1, T3)
        return KFAC(model, lr=lr, factor_every=5, inverse_every=10)
    if name == "Shampoo":
        return Shampoo(p, lr=lr)
    if name == "SAM(SGD)":
        return SAM(p, torch.optim.SGD, rho=0.05, lr=lr, momentum=0.9)
    if name == "HessianFree":
        return HessianFree(model, loss_fn, lr=lr, cg_max_iter=20)
    if name == "NaturalGradient":
        return NaturalGradient(model, loss_fn, lr=lr, cg_max_iter=10)
    if name == "AdaHessian":
        return AdaHessian(p, lr=lr)
    raise ValueError(name)


GRIDS = {
    "SGD-momentum": [0.03, 0.1, 0.3],
    "Adam": [0.003, 0.01, 0.03],
    "KFAC": [0.01, 0.03, 0.1],
    "Shampoo": [0.003, 0.01, 0.03],
    "SAM(SGD)": [0.03, 0.1, 0.3],
    "HessianFree": [0.3, 1.0],
    "NaturalGradient": [0.1, 0.3, 1.0],
    "AdaHessian": [0.01, 0.03, 0.1],
}


def train_run(name, arch, lr, X, y, Xt, yt, epochs, wall_cap):
    model = digits_mlp(seed=0) if arch == "mlp" else digits_cnn(seed=0)
    loss_fn = nn.CrossEntropyLoss()
    opt = make(name, model, lr, loss_fn)
    gen = torch.Generator().manual_seed(0)
    losses, times, step_times = [], [], []
    t_total, capped = 0.0, False
    for _ in range(epochs):
        perm = torch.randperm(len(X), generator=gen)
        for b in range(0, len(X), BATCH):
            i = perm[b:b + BATCH]
            model.train()

            def closure(i=i):
                opt.zero_grad()
                loss = loss_fn(model(X[i]), y[i])
                loss.backward(create_graph=name == "AdaHessian")
                return loss

            t0 = time.perf_counter()
            opt.step(closure)
            dt = time.perf_counter() - t0
            t_total += dt
            step_times.append(dt)
            model.eval()
            with torch.no_grad():
                full = float(loss_fn(model(X), y))
            losses.append(full if full == full else float("inf"))
            times.append(t_total)
            if t_total > wall_cap:
                capped = True
                break
        if capped:
            break
    for q in model.parameters():
        q.grad = None
    model.eval()
    with torch.no_grad():
        acc = float((model(Xt).argmax(1) == yt).float().mean())
    return dict(optimizer=name, arch=arch, lr=lr, losses=losses, times=times,
                final_loss=losses[-1], test_accuracy=acc, capped=capped,
                median_step_s=statistics.median(step_times), mean_step_s=statistics.fmean(step_times),
                steps=len(losses))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer epochs, for a smoke run")
    args = ap.parse_args()
    torch.set_num_threads(1)  # the machine's 2 cores are shared; 1 thread is fastest and fair
    epochs = 5 if args.quick else 20
    wall_cap = 30.0
    out = {"epochs": epochs, "batch": BATCH, "wall_cap_s": wall_cap, "results": {}}
    for arch in ("mlp", "cnn"):
        X, y = digits_data(None, image=arch == "cnn")
        Xt, yt = digits_data(None, image=arch == "cnn", test=True)
        best = {}
        for name, grid in GRIDS.items():
            runs = [train_run(name, arch, lr, X, y, Xt, yt, epochs, wall_cap) for lr in grid]
            best[name] = min(runs, key=lambda r: r["final_loss"])
            best[name]["lr_grid"] = {str(r["lr"]): r["final_loss"] for r in runs}
            print(f"{arch} {name}: best lr {best[name]['lr']} loss {best[name]['final_loss']:.3g}",
                  flush=True)
        adam = best["Adam"]
        target, t_adam = adam["final_loss"], adam["times"][-1]
        for r in best.values():
            r["steps_to_adam_final_loss"] = next(
                (k + 1 for k, v in enumerate(r["losses"]) if v <= target), None)
            within = [v for v, t in zip(r["losses"], r["times"]) if t <= t_adam]
            r["loss_at_adam_wall_time"] = within[-1] if within else None
            r["step_time_vs_adam"] = r["median_step_s"] / adam["median_step_s"]
            r["mean_step_time_vs_adam"] = r["mean_step_s"] / adam["mean_step_s"]
        out["results"][arch] = best
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "optim.json").write_text(json.dumps(out, indent=1))
    header = (f"{'model':4} {'optimizer':16} {'lr':>6} {'final loss':>10} {'loss@Adam time':>14} "
              f"{'steps to Adam':>13} {'test acc':>8} {'ms/step':>8} {'x Adam':>7} {'mean x Adam':>11}")
    print(header)
    for arch, best in out["results"].items():
        for r in best.values():
            la = r["loss_at_adam_wall_time"]
            print(f"{arch:4} {r['optimizer']:16} {r['lr']:>6g} {r['final_loss']:>10.3g} "
                  f"{(f'{la:.3g}' if la is not None else '-'):>14} "
                  f"{str(r['steps_to_adam_final_loss']):>13} {r['test_accuracy']:>8.3f} "
                  f"{1e3 * r['median_step_s']:>8.2f} {r['step_time_vs_adam']:>7.2f} "
                  f"{r['mean_step_time_vs_adam']:>11.2f}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for row, (arch, best) in enumerate(out["results"].items()):
        for r in best.values():
            axes[row, 0].semilogy(range(1, len(r["losses"]) + 1), r["losses"], label=r["optimizer"])
            axes[row, 1].semilogy(r["times"], r["losses"], label=r["optimizer"])
        axes[row, 0].set(title=f"{arch}: training loss per step", xlabel="step", ylabel="loss")
        axes[row, 1].set(title=f"{arch}: training loss per second", xlabel="s", ylabel="loss")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "optim.png", dpi=90)
    print(json.dumps({a: {n: {k: r[k] for k in ("lr", "final_loss", "steps_to_adam_final_loss",
                                                 "test_accuracy", "median_step_s",
                                                 "step_time_vs_adam", "mean_step_time_vs_adam")}
                          for n, r in b.items()} for a, b in out["results"].items()}, indent=1))


if __name__ == "__main__":
    main()
