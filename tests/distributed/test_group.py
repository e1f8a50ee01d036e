"""Process-group helpers without a group (single process): choice of group, ranks, sharding."""

from __future__ import annotations

import pytest
import torch

import hesse
from hesse.distributed import (
    get_rank,
    get_world_size,
    is_main_process,
    launched_by_torchrun,
    print_once,
    resolve_group,
    shard,
)


def test_resolve_group_without_initialized_group():
    assert resolve_group(None) is None
    assert resolve_group(False) is None
    with pytest.raises(ValueError, match="init_process_group"):
        resolve_group(True)
    with pytest.raises(TypeError, match="distributed must be None"):
        resolve_group("gloo")


def test_operator_rejects_bad_distributed_argument():
    X, y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64)
    model = torch.nn.Linear(3, 1).double()
    with pytest.raises(TypeError, match="distributed must be"):
        hesse.HessianOperator(model, torch.nn.MSELoss(), (X, y), distributed=2)
    with pytest.raises(ValueError, match="distributed=True"):
        hesse.GGNOperator(model, torch.nn.MSELoss(), (X, y), distributed=True)


def test_rank_helpers_follow_torchrun_environment(monkeypatch, capsys):
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR"):
        monkeypatch.delenv(key, raising=False)
    assert (get_rank(), get_world_size(), is_main_process(), launched_by_torchrun()) == (0, 1, True, False)
    print_once("shown")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    assert (get_rank(), get_world_size(), is_main_process(), launched_by_torchrun()) == (1, 2, False, True)
    print_once("hidden")
    assert capsys.readouterr().out == "shown\n"


def test_shard_splits_into_contiguous_parts_covering_the_data(monkeypatch):
    X, y = torch.arange(10.0).reshape(5, 2), torch.arange(5)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert shard(X, y)[0] is X
    parts = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        xs, ys = shard(X, y)
        assert xs.shape[0] == ys.shape[0] and xs.shape[0] in (1, 2)
        parts.append(ys)
    assert torch.equal(torch.cat(parts), y)
    with pytest.raises(ValueError, match="common leading dimension"):
        shard(X, torch.arange(4))
