"""One rank of the 2-process gloo runs started by ``test_data_parallel.py`` (not a test module).

usage: python _worker.py SCENARIO RANK WORLD_SIZE INIT_FILE OUT_DIR

Scenarios
- ``agree``: data-parallel operators over unequal shards; saves products, eigsh, trace, the
  local (distributed=False) operator and a DDP-wrapped model's product to OUT_DIR/rank{r}.pt.
- ``fail``: rank 1's data loader raises, first during construction, then during a product;
  every rank records what it raised in OUT_DIR/rank{r}.json.
"""

from __future__ import annotations

import json
import sys
import warnings

import torch
import torch.distributed as dist

# Shards: rank 0 holds samples [0, 130) in two batches, rank 1 holds [130, 200) in two.
SHARDS = {0: [(0, 64), (64, 130)], 1: [(130, 162), (162, 200)]}
NUM_SAMPLES = 200


def problem():
    from hesse.demo_models import digits_data, digits_mlp, train

    X, y = digits_data(NUM_SAMPLES, dtype=torch.float64)
    model = digits_mlp(hidden=12, depth=2, seed=0, dtype=torch.float64)  # 1,066 parameters
    train(model, X, y, steps=30, lr=0.5)
    return model, torch.nn.CrossEntropyLoss(), X, y


def probe_vectors(n: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    return torch.randn(n, 3, generator=gen, dtype=torch.float64)


class BrokenLoader:
    """Yields its batches on the first ``good_passes`` iterations, then raises on the second batch."""

    def __init__(self, batches, good_passes: int):
        self.batches, self.good_passes, self.passes = batches, good_passes, 0

    def __iter__(self):
        self.passes += 1
        for j, batch in enumerate(self.batches):
            if self.passes > self.good_passes and j == 1:
                raise OSError("disk read failed in shard loader")
            yield batch


def agree(rank: int, out_dir: str) -> None:
    import hesse

    model, loss_fn, X, y = problem()
    local = [(X[a:b], y[a:b]) for a, b in SHARDS[rank]]
    V = probe_vectors(sum(p.numel() for p in model.parameters()))
    res: dict = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        H = hesse.HessianOperator(model, loss_fn, local)
        hesse.HessianOperator(model, loss_fn, local)  # a second operator: not announced again
    res["notices"] = sum(issubclass(w.category, hesse.distributed.DataParallelNotice) for w in caught)
    res["num_samples"], res["loss"], res["gradient"] = H.num_samples, H.loss, H.gradient
    res["world_size"] = H.world_size
    res["hv"] = H.matvec(V[:, 0])
    res["hV"] = H.matmat(V)
    H_recompute = hesse.HessianOperator(model, loss_fn, local, keep_graph=False)
    res["hv_recompute"] = H_recompute.matvec(V[:, 0])
    res["ggn"] = hesse.GGNOperator(model, loss_fn, local).matmat(V)
    res["fisher"] = hesse.FisherOperator(model, loss_fn, local).matmat(V)
    eig = hesse.eigsh(H, k=5, tol=1e-8, seed=3)
    res["eig"], res["eig_converged"] = eig.values, bool(eig.all_converged)
    res["eig_low_memory"] = hesse.eigsh(H, k=5, tol=1e-8, seed=3, low_memory=True).values
    res["trace_hutchinson"] = hesse.trace(H, method="hutchinson", num_matvecs=20, seed=5).value
    res["trace_xtrace"] = hesse.trace(H, method="xtrace", num_matvecs=24, seed=5).value
    # distributed=False on an initialized group: this rank's data only
    H_local = hesse.HessianOperator(model, loss_fn, local, distributed=False)
    res["local_num_samples"], res["local_hv"] = H_local.num_samples, H_local.matvec(V[:, 0])
    res["local_world_size"] = H_local.world_size
    # a model wrapped in DistributedDataParallel
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    res["ddp_hv"] = hesse.HessianOperator(ddp, loss_fn, local).matvec(V[:, 0])
    torch.save(res, f"{out_dir}/rank{rank}.pt")


def fail(rank: int, out_dir: str) -> None:
    import hesse

    model, loss_fn, X, y = problem()
    local = [(X[a:b], y[a:b]) for a, b in SHARDS[rank]]
    record: dict = {}
    # 1) rank 1 fails while the operator is built
    data = BrokenLoader(local, good_passes=0 if rank == 1 else 10)
    try:
        hesse.HessianOperator(model, loss_fn, data, keep_graph=False)
        record["construct"] = None
    except Exception as err:  # noqa: BLE001 - recorded for the test to check
        record["construct"] = [type(err).__name__, str(err), list(getattr(err, "__notes__", []))]
    # 2) rank 1 fails in the second product (construction and the first product pass)
    data = BrokenLoader(local, good_passes=2 if rank == 1 else 10)
    H = hesse.HessianOperator(model, loss_fn, data, keep_graph=False)
    v = torch.ones(H.shape[0], dtype=torch.float64)
    H.matvec(v)
    try:
        H.matvec(v)
        record["product"] = None
    except Exception as err:  # noqa: BLE001
        record["product"] = [type(err).__name__, str(err), list(getattr(err, "__notes__", []))]
    # 3) the group is still usable afterwards (all ranks left the failed collective together)
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    record["after"] = float(t)
    with open(f"{out_dir}/rank{rank}.json", "w") as fh:
        json.dump(record, fh)


def main() -> None:
    scenario, rank, world, init_file, out_dir = sys.argv[1:6]
    rank, world = int(rank), int(world)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        {"agree": agree, "fail": fail}[scenario](rank, out_dir)
        dist.barrier()  # no rank tears the group down while a peer still uses it
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
