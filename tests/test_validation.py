"""The hyperparameter checks of hesse._validation: what they accept and what they refuse."""

from __future__ import annotations

import math

import pytest
import torch

from hesse import _validation as v


@pytest.mark.parametrize("value, kwargs, error", [
    (True, {}, TypeError),                      # a bool is not a learning rate
    ("0.1", {}, TypeError),
    (None, {}, TypeError),
    (math.nan, {}, ValueError),
    (math.inf, {}, ValueError),
    (-1e-3, {}, ValueError),
    (0.0, {}, ValueError),                      # > 0 unless allow_zero
    (-0.0, {"allow_zero": True}, None),
    (1.0, {"upper": 1.0, "upper_open": True}, ValueError),
    (1.0, {"upper": 1.0}, None),
    (1.5, {"upper": 1.0}, ValueError),
    (3, {}, None),
])
def test_check_hyper(value, kwargs, error):
    if error is None:
        assert v.check_hyper(value, "lr", **kwargs) == float(value)
    else:
        with pytest.raises(error, match="lr"):
            v.check_hyper(value, "lr", **kwargs)


@pytest.mark.parametrize("betas, ok", [
    ((0.9, 0.999), True), ([0.0, 0.0], True), ((0.9,), False), (0.9, False), ((0.9, 1.0), False),
    ((1.0, 0.5), False), ((-0.1, 0.5), False), ((0.9, math.nan), False), ((0.9, "0.99"), False),
])
def test_check_betas_is_adams_range(betas, ok):
    if ok:
        assert v.check_betas(betas) == tuple(float(b) for b in betas)
    else:
        with pytest.raises((ValueError, TypeError), match="betas"):
            v.check_betas(betas)


@pytest.mark.parametrize("value, ok", [(1, True), (0, False), (True, False), (2.0, False), (-3, False)])
def test_check_int(value, ok):
    if ok:
        assert v.check_int(value, "every") == value
    else:
        with pytest.raises(ValueError, match="every"):
            v.check_int(value, "every")


def test_optimizers_use_the_one_implementation():
    from hesse.optim import _common

    for name in ("check_hyper", "check_int", "check_betas", "check_model", "model_param_groups"):
        assert getattr(_common, name) is getattr(v, name), name


def test_param_group_given_as_a_generator_keeps_its_parameters():
    import hesse

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    opt = hesse.optim.KFAC(model, params=[{"params": model[0].parameters()},
                                          {"params": model[2].parameters(), "lr": 0.01}])
    sizes = [len(g["params"]) for g in opt.param_groups]
    assert sizes == [2, 2]
