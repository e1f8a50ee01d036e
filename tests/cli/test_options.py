"""One vocabulary across the verbs: every option has a help line, a concept has one name, metavar
and default wherever it appears, and the older spellings still parse (hidden)."""

from __future__ import annotations

import argparse
import json
import warnings

import pytest
import torch

from hesse.cli.main import VERBS, build_parser, main
from hesse.operators.evaluation import HesseModeWarning


def _verb_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: sub.choices[name] for name in VERBS}


def _options(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def test_every_verb_is_walked():
    assert set(_verb_parsers()) == {"demo", "analyze", "minimize", "spectrum", "report"}


@pytest.mark.parametrize("verb", VERBS)
def test_every_option_has_help(verb):
    p = _verb_parsers()[verb]
    for action in p._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        assert action.help and action.help.strip(), f"hesse {verb} {action.option_strings or action.dest}: no help"


@pytest.mark.parametrize("verb", VERBS)
def test_an_option_that_takes_a_value_names_it(verb):
    for action in _options(_verb_parsers()[verb]):
        if action.help == argparse.SUPPRESS or action.nargs == 0 or action.choices:
            continue
        assert action.metavar, f"hesse {verb} {action.option_strings[0]}: no metavar"


def test_a_concept_has_one_spelling_across_verbs():
    """Options with the same destination in several verbs: the same visible flags, metavar,
    default, type and action."""
    seen: dict[str, tuple[str, tuple]] = {}
    shared = set()
    for verb, p in _verb_parsers().items():
        for action in _options(p):
            if action.help == argparse.SUPPRESS:
                continue
            key = (tuple(action.option_strings), action.metavar, action.default, action.type,
                   type(action).__name__, tuple(action.choices or ()))
            if action.dest in seen:
                shared.add(action.dest)
                first_verb, first = seen[action.dest]
                assert key == first, f"--{action.dest}: {first_verb} has {first}, {verb} has {key}"
            else:
                seen[action.dest] = (verb, key)
    # the concepts the vocabulary is about are shared (the test would otherwise compare nothing)
    assert {"model", "k", "seed", "plot", "variables", "json", "quiet", "lr", "out", "train_mode"} <= shared


@pytest.mark.parametrize("verb, old, dest, value", [
    ("analyze", ["--vars", "y,x"], "variables", "y,x"),
])
def test_old_spellings_still_parse(verb, old, dest, value):
    args = build_parser().parse_args([verb, "x + y", *old])
    assert getattr(args, dest) == value


def test_old_spelling_hidden_from_help():
    assert "--vars" not in _verb_parsers()["analyze"].format_help()


def test_seed_reaches_the_box_search(capsys):
    """analyze draws Sobol starts: --seed is passed through (the starts, printed in --json, differ)."""
    outs = []
    for seed in ("0", "1"):
        assert main(["analyze", "x**2 - y**2", "--bounds", "-1:1", "--starts", "4", "--no-symbolic",
                     "--json", "--quiet", "--seed", seed]) == 0
        outs.append(json.loads(capsys.readouterr().out))
    # the critical point is the same for every seed (the math), found from other starts
    assert [p["kind"] for p in outs[0]["points"]] == [p["kind"] for p in outs[1]["points"]] == ["saddle"]


BN_MODEL = '''
import torch
from torch import nn

def make():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2))
    with torch.no_grad():
        model(torch.randn(64, 3) * 3 + 1)  # running statistics away from the batch's
    model.train()
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    return {"model": model, "loss_fn": nn.CrossEntropyLoss(), "data": (x, y)}
'''


@pytest.mark.parametrize("curvature", ["hessian"])
def test_train_mode_evaluates_in_the_models_own_mode(tmp_path, capsys, load_factory, curvature):
    """--train-mode is eval_mode=False: the loss is the training-mode loss (BatchNorm on batch
    statistics) computed by hand, no HesseModeWarning; without it the eval-mode loss and the warning."""
    path = tmp_path / "bn.py"
    path.write_text(BN_MODEL)
    prob = load_factory(path, "make")
    model, (x, y) = prob["model"], prob["data"]
    with torch.no_grad():
        model.eval()
        eval_loss = float(prob["loss_fn"](model(x), y))
        model.train()
        train_loss = float(prob["loss_fn"](model(x), y))
    assert abs(train_loss - eval_loss) > 1e-3  # the two modes differ on this model
    got = {}
    for flag in ([], ["--train-mode"]):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert main(["spectrum", "--model", f"{path}:make", "--k", "1", "--json", "--quiet",
                         "--curvature", curvature, *flag]) == 0
        got[bool(flag)] = (json.loads(capsys.readouterr().out)["loss"],
                           any(issubclass(w.category, HesseModeWarning) for w in caught))
    # float32 losses of a 16-sample batch: 1e-5 relative is far above roundoff, far below the gap
    assert got[False][0] == pytest.approx(eval_loss, rel=1e-5) and got[False][1]
    assert got[True][0] == pytest.approx(train_loss, rel=1e-5) and not got[True][1]


def test_mode_warning_names_the_flag():
    from hesse import HessianOperator

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    model.train()
    with pytest.warns(HesseModeWarning, match="--train-mode"):
        HessianOperator(model, torch.nn.MSELoss(), (torch.randn(4, 2), torch.randn(4, 2)))


def test_report_train_mode_analyses_the_training_mode_loss(tmp_path, capsys, load_factory, monkeypatch):
    """report --train-mode passes eval_mode=False to every operator of the analysis: the final-point
    loss is the training-mode loss computed by hand, and no HesseModeWarning is given."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bn.py"
    path.write_text(BN_MODEL)
    prob = load_factory(path, "make")
    model, (x, y) = prob["model"], prob["data"]
    with torch.no_grad():
        model.eval()
        eval_loss = float(prob["loss_fn"](model(x), y))
        model.train()
        train_loss = float(prob["loss_fn"](model(x), y))
    got = {}
    for flag in ([], ["--train-mode"]):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert main(["report", "--model", f"{path}:make", "--k", "1", "--json", "--quiet",
                         "--out", f"rep{len(flag)}", *flag]) == 0
        got[bool(flag)] = (json.loads(capsys.readouterr().out)["final"]["loss"],
                           any(issubclass(w.category, HesseModeWarning) for w in caught))
    # float32 losses of a 16-sample batch: 1e-5 relative is far above roundoff, far below the gap
    assert got[False][0] == pytest.approx(eval_loss, rel=1e-5) and got[False][1]
    assert got[True][0] == pytest.approx(train_loss, rel=1e-5) and not got[True][1]
