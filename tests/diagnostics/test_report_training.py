"""Training under the monitor for reports: divergence diagnosis, resume after any interruption,
generator data."""

import random

import pytest
import torch

from hesse.diagnostics import report as rep
from hesse.diagnostics.logging import read_log
from hesse.diagnostics.report import (
    DIVERGENCE_LOSS_FACTOR,
    DIVERGENCE_RATIO,
    describe_sharpness,
    diagnosis,
    train_monitored,
    training_divergence,
)


def _recs(ratios, losses, limit=2.0):
    return [{"step": 10 * i, "loss": l, "lambda_max": q * limit, "stability_limit": limit, "sharpness_ratio": q,
             "status": "unstable" if q > 1.25 else "edge_of_stability" if q >= 0.95 else "stable"}
            for i, (q, l) in enumerate(zip(ratios, losses))]


def _payload(records, losses):
    final = {"num_outliers": 1, "outliers_at_least": False, "top_eigenvalues": [1.0], "bulk_edge": 0.1,
             "summary": {}}
    return {"train_steps": len(losses), "records": records, "training_losses": losses,
            "sharpness": describe_sharpness(records, (0.05, 0.25), losses), "final": final}


@pytest.mark.parametrize("case", ["loss_blowup", "ratio_far_above", "nan_loss"])
def test_diverged_run_is_not_called_edge_of_stability(case):
    # the reproduced run: loss 0.97 -> 2e206, lambda_max / (2/lr) = 1877 at the end
    if case == "loss_blowup":
        recs, losses = _recs([0.5, 1.1, 1877.0], [0.97, 3.0, 2e206]), [0.97, 2.0, 5e100, 2e206]
    elif case == "ratio_far_above":  # loss not (yet) far up, but lambda_max at 5x the limit
        recs, losses = _recs([0.5, 1.0, 5.0], [0.97, 0.9, 1.5]), [0.97, 0.95, 1.5]
    else:
        recs, losses = _recs([0.5, 1.0, 1.1], [0.97, 0.9, None]), [0.97, 0.9, float("nan")]
    assert training_divergence(recs, losses) is not None
    sh = describe_sharpness(recs, (0.05, 0.25), losses)
    assert sh["diverged"] and "diverged" in sh["sentence"] and "edge of stability" not in sh["sentence"]
    text = diagnosis(_payload(recs, losses))
    assert "diverged" in text and "edge of stability" not in text.lower()


def test_edge_of_stability_run_is_not_diverged():
    # hovering at the limit with a non-monotone but falling loss: the edge of stability, not divergence
    recs = _recs([0.5, 0.97, 1.2, 1.05, 1.1], [0.97, 0.8, 0.85, 0.6, 0.5])
    losses = [0.97, 0.9, 0.8, 0.95, 0.6, 0.5]
    assert training_divergence(recs, losses) is None
    text = diagnosis(_payload(recs, losses))
    assert "edge of stability (Cohen et al. 2021)" in text and "diverged" not in text


def test_divergence_thresholds_are_the_boundaries():
    # just below both thresholds: not diverged; just above either: diverged
    below = _recs([0.5, DIVERGENCE_RATIO * 0.99], [1.0, DIVERGENCE_LOSS_FACTOR * 0.99])
    assert training_divergence(below, [1.0, DIVERGENCE_LOSS_FACTOR * 0.99]) is None
    assert training_divergence(_recs([0.5, DIVERGENCE_RATIO * 1.01], [1.0, 0.5]), [1.0, 0.5]) is not None
    loss_up = DIVERGENCE_LOSS_FACTOR * 1.01
    assert training_divergence(_recs([0.5, 1.0], [1.0, loss_up]), [1.0, loss_up]) is not None


# ------------------------------------------------------------------ resume after any interruption

def _problem(data_kind="pair"):
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(24, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 2, (24,), generator=gen)
    torch.manual_seed(0)
    # 8 parameters: every check is a small dense eigensolve, so 21 runs stay fast
    model = torch.nn.Sequential(torch.nn.Linear(3, 2)).double()
    data = (X, y) if data_kind == "pair" else ((X[i:i + 8], y[i:i + 8]) for i in range(0, 24, 8))
    return model, torch.nn.CrossEntropyLoss(), data


TRAIN = {"train_steps": 8, "lr": 0.5, "every": 3, "density_every": 6, "seed": 0, "progress": False}


def _files(log_dir):
    out = {"records": read_log(log_dir)}
    for name in ("sharpness.csv", "density.jsonl"):
        out[name] = (log_dir / name).read_text()
    return out


class _Interrupt:
    """Raise KeyboardInterrupt at the ``at``-th call of any patched function (before or after it runs)."""

    def __init__(self, at):
        self.at, self.calls = at, 0

    def wrap(self, fn):
        def inner(*a, **k):
            self.calls += 1
            if self.calls == self.at and self.at % 2 == 0:
                raise KeyboardInterrupt  # before the call: nothing of it happened
            result = fn(*a, **k)
            if self.calls == self.at:
                raise KeyboardInterrupt  # after the call: it happened, the caller's next line did not
            return result
        return inner


def _patch(monkeypatch, counter):
    from hesse.diagnostics import logging as log_mod
    from hesse.diagnostics import monitor as mon_mod

    monkeypatch.setattr(rep, "_full_batch_gradient_step", counter.wrap(rep._full_batch_gradient_step))
    monkeypatch.setattr(rep, "_save_checkpoint", counter.wrap(rep._save_checkpoint))
    monkeypatch.setattr(log_mod.SharpnessLog, "write", counter.wrap(log_mod.SharpnessLog.write))
    monkeypatch.setattr(log_mod.SharpnessLog, "write_density", counter.wrap(log_mod.SharpnessLog.write_density))
    monkeypatch.setattr(mon_mod.SharpnessMonitor, "_save_state", counter.wrap(mon_mod.SharpnessMonitor._save_state))


def test_resume_after_interruption_at_random_moments_equals_uninterrupted(tmp_path, monkeypatch):
    model, loss_fn, data = _problem()
    ref_dir = tmp_path / "ref"
    with monkeypatch.context() as m:
        counter = _Interrupt(at=-1)  # counts only
        _patch(m, counter)
        _, _, ref_losses = train_monitored(model, loss_fn, data, log_dir=str(ref_dir), **TRAIN)
    total = counter.calls
    reference = _files(ref_dir)
    assert [r["step"] for r in reference["records"]] == [0, 3, 6]
    moments = sorted(random.Random(0).sample(range(1, total + 1), 10))
    for at in moments:
        run_dir = tmp_path / f"run{at}"
        model, loss_fn, data = _problem()
        with monkeypatch.context() as m:
            _patch(m, _Interrupt(at))
            with pytest.raises(KeyboardInterrupt):
                train_monitored(model, loss_fn, data, log_dir=str(run_dir), **TRAIN)
        model, loss_fn, data = _problem()  # a fresh process: the factory's initial weights
        _, _, losses = train_monitored(model, loss_fn, data, log_dir=str(run_dir), resume=True, **TRAIN)
        assert _files(run_dir) == reference, f"interrupted at call {at} of {total}"
        assert losses == ref_losses


def test_generator_data_trains_and_analyses(tmp_path):
    # a one-shot iterator is read once: the same numbers as the list of its batches
    model, loss_fn, gen_data = _problem("generator")
    out = rep.analyze_training(model, loss_fn, gen_data, train_steps=4, lr=0.5, every=2, k=2,
                               density_steps=10, landscape_steps=5, progress=False)
    model2, loss_fn2, data2 = _problem("generator")
    ref = rep.analyze_training(model2, loss_fn2, list(data2), train_steps=4, lr=0.5, every=2, k=2,
                               density_steps=10, landscape_steps=5, progress=False)
    assert out["training_losses"] == ref["training_losses"] and len(out["training_losses"]) == 4
    assert out["final"]["top_eigenvalues"] == pytest.approx(ref["final"]["top_eigenvalues"], rel=1e-12)
    model3, loss_fn3, gen3 = _problem("generator")
    untrained = rep.analyze_training(model3, loss_fn3, gen3, k=2, density_steps=10, landscape_steps=5,
                                     progress=False)
    assert untrained["final"]["num_parameters"] == 8


@pytest.mark.parametrize("ratios, start, words", [
    # the reproduced runs: lambda_max 8.9 at 2/lr = 6.67 (ratio 1.34), and 1.61 at 2/lr = 1 (1.61)
    ([1.34, 1.1, 1.0, 1.02, 0.98], "above the limit", ["started above 2/lr", "fell to", "Lewkowycz et al. (2020)"]),
    ([1.61, 1.3, 1.05, 1.0, 1.01], "above the limit", ["started above 2/lr", "fell to 2.1 by step 20"]),
    ([1.0, 1.02, 0.99, 1.01], "at the limit", ["started at 2/lr"]),
    ([0.4, 0.7, 0.97, 1.02, 1.0], "below the limit", ["rose from 0.8 to 2/lr", "progressive sharpening"]),
])
def test_diagnosis_says_whether_lambda_max_rose_to_or_fell_to_the_limit(ratios, start, words):
    recs = _recs(ratios, [1.0 - 0.1 * i for i in range(len(ratios))])
    losses = [r["loss"] for r in recs]
    sh = describe_sharpness(recs, (0.05, 0.25), losses)
    assert not sh["diverged"] and sh["start"] == start
    for w in words:
        assert w in sh["sentence"], sh["sentence"]
    if start != "below the limit":
        assert "rose from" not in sh["sentence"] and "progressive sharpening" not in sh["sentence"]


def _dropout_problem():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(32, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (32,), generator=gen)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Dropout(0.2),
                                torch.nn.Linear(6, 3)).double()
    return model, torch.nn.CrossEntropyLoss(), (X, y)


def test_mode_warning_once_per_run():
    # a training-mode Dropout model: every operator of the run (one per check, the final analysis)
    # warned that it evaluates in eval mode; the docs promise once
    import warnings

    from hesse.diagnostics import SharpnessMonitor
    from hesse.operators.evaluation import HesseModeWarning

    model, loss_fn, data = _dropout_problem()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rep.analyze_training(model, loss_fn, data, train_steps=6, lr=0.1, every=2, k=2, density_steps=5,
                             landscape_steps=5)
    assert sum(issubclass(w.category, HesseModeWarning) for w in caught) == 1
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = SharpnessMonitor(model, loss_fn, data, every=1, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(4):
            mon.step(opt)
    assert sum(issubclass(w.category, HesseModeWarning) for w in caught) == 1


def test_mode_warning_once_passes_other_warnings():
    import warnings

    from hesse.diagnostics._data import mode_warning_once
    from hesse.operators.evaluation import HesseModeWarning

    state = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            with mode_warning_once(state):
                warnings.warn("mode", HesseModeWarning, stacklevel=1)
                warnings.warn("other", RuntimeWarning, stacklevel=1)
    assert [w.category for w in caught] == [HesseModeWarning, RuntimeWarning, RuntimeWarning]


def test_losses_name_their_mode_for_a_dropout_model():
    # training losses come from the model in train mode (dropout on), the final point's from eval mode;
    # the summary said "loss 0.09293 -> 0.07632" and "loss 0.02897" with nothing telling them apart
    model, loss_fn, data = _dropout_problem()
    out = rep.analyze_training(model, loss_fn, data, train_steps=4, lr=0.1, every=2, k=2, density_steps=5,
                               landscape_steps=5)
    payload = {k: v for k, v in out.items() if not k.startswith("_")}
    text = rep.summary_markdown(payload, "t")
    assert "- loss (train mode, dropout on) " in text and "loss (eval mode) " in text
    plain = torch.nn.Sequential(torch.nn.Linear(4, 3)).double()
    out = rep.analyze_training(plain, loss_fn, data, train_steps=2, lr=0.1, every=1, k=2, density_steps=5,
                               landscape_steps=5)
    text = rep.summary_markdown({k: v for k, v in out.items() if not k.startswith("_")}, "t")
    assert "mode" not in text.split("## Final point")[1].split("\n")[2] and "- loss " in text


def test_negative_eigenvalues_in_plain_words():
    final = {"summary": {"fraction_negative": 0.815, "negative_mass": 0.07, "lambda_min": -0.0213},
             "num_outliers": 2, "outliers_at_least": False, "top_eigenvalues": [5.0, 3.0, 0.1], "bulk_edge": 0.2}
    sentence = rep._final_sentence(final)
    assert ("81.5% of the eigenvalues are below zero and together make up 7.0% of the sum of |eigenvalue|, "
            "small next to the positive ones (the most negative is -0.0213)") in sentence
    assert "negative mass" not in sentence
