"""Watch sharpness while a network trains: hesse.SharpnessMonitor in a plain PyTorch loop.

Run: ``python examples/monitor_training.py [--steps 300] [--out monitor-example]``. A digits MLP is
trained by full-batch gradient descent on the MSE to one-hot targets at lr = 1; every 10 steps the
monitor measures lambda_max (Lanczos warm-started from the previous top eigenvector), compares it
with the stability limit 2/lr, and logs JSON lines + CSV in ``--out``. Expect lambda_max to rise to
2/lr and hover there: the edge of stability (Cohen et al. 2021). Then a 1-D loss slice along the top
eigenvector and the two figures are written.
"""

import argparse
import os

import torch

import hesse
from hesse.demo_models import digits_data, digits_mlp


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--out", default="monitor-example")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a tiny model: threads only add overhead
    X, y = digits_data(args.samples)
    Y = torch.nn.functional.one_hot(y, 10).float()
    model, loss_fn = digits_mlp(hidden=32), torch.nn.MSELoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    monitor = hesse.SharpnessMonitor(model, loss_fn, (X, Y), every=10, log_dir=args.out,
                                     eos_band=(0.05, 0.25), progress=False)
    monitor.measure(optimizer, step=0)
    for _ in range(args.steps):
        optimizer.zero_grad()
        loss_fn(model(X), Y).backward()
        optimizer.step()
        record = monitor.step(optimizer)  # None except every 10th step
        if record is not None and record.step % 50 == 0:
            print(record)
    monitor.close()
    reached = next((r.step for r in monitor.records if r.sharpness_ratio >= 0.95), None)
    print(f"lambda_max reached 2/lr = {2 / 1.0:g} at step {reached}" if reached is not None
          else "lambda_max stayed below 2/lr")
    slice_ = hesse.landscape(model, loss_fn, (X, Y), directions="eigen", dims=1, steps=15, span=0.5,
                             progress=False)
    print(slice_)
    from hesse.plot import plot_landscape, plot_sharpness

    plot_sharpness(monitor, eos_band=(0.05, 0.25)).savefig(os.path.join(args.out, "sharpness.png"))
    plot_landscape(slice_).savefig(os.path.join(args.out, "landscape.png"))
    print(f"log and figures in {args.out}/")
    return {"records": monitor.records, "reached": reached, "landscape": slice_}


if __name__ == "__main__":
    main()
