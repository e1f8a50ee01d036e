"""``hesse report --model file.py:factory``: analysis of a user's model, checkpoints, --resume."""

import json

import pytest
import torch

from hesse.cli.main import main

FACTORY = '''
import torch

def make():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(48, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (48,), generator=gen)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    return {"model": model, "loss_fn": torch.nn.CrossEntropyLoss(), "data": (X, y)}
'''



@pytest.fixture
def factory(tmp_path):
    path = tmp_path / "mymodel.py"
    path.write_text(FACTORY)
    return f"{path}:make"


def _report(capsys, *argv):
    rc = main(["report", *argv, "--quiet", "--json"])
    out = capsys.readouterr().out
    assert rc == 0, capsys.readouterr().err
    return json.loads(out)


def test_report_without_training(factory, tmp_path, capsys):
    payload = _report(capsys, "--model", factory, "--out", str(tmp_path / "r"), "--k", "4")
    fin = payload["final"]
    assert fin["num_parameters"] == 6 * 8 + 8 + 8 * 3 + 3
    # n = 83 is diagonalised densely by eigsh: compare with torch.func ground truth
    import importlib.util

    spec = importlib.util.spec_from_file_location("mymodel", factory.rsplit(":", 1)[0])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    prob = mod.make()
    from hesse.testing.reference import dense_hessian_of_model

    H = dense_hessian_of_model(prob["model"], prob["loss_fn"], *prob["data"]).reshape(83, 83)
    lam = torch.linalg.eigvalsh(H)
    assert fin["top_eigenvalues"] == pytest.approx(lam[-4:].flip(0).tolist(), rel=1e-9)
    assert payload["train_steps"] == 0 and payload["sharpness"] is None
    assert (tmp_path / "r" / "summary.md").is_file() and (tmp_path / "r" / "landscape_1d.png").is_file()


def test_report_checkpoint_is_loaded(factory, tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("mymodel2", factory.rsplit(":", 1)[0])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    prob = mod.make()
    with torch.no_grad():
        for q in prob["model"].parameters():
            q.mul_(0.5)
    with torch.no_grad():
        expected = float(prob["loss_fn"](prob["model"](prob["data"][0]), prob["data"][1]))
    torch.save(prob["model"].state_dict(), tmp_path / "w.pt")
    payload = _report(capsys, "--model", factory, "--checkpoint", str(tmp_path / "w.pt"), "--out",
                      str(tmp_path / "r"), "--k", "2")
    assert payload["final"]["loss"] == pytest.approx(expected, rel=1e-12)


def test_report_train_then_resume_equals_uninterrupted(factory, tmp_path, capsys):
    full = _report(capsys, "--model", factory, "--train", "20", "--every", "5", "--lr", "0.5",
                   "--out", str(tmp_path / "full"), "--k", "2")
    assert [r["step"] for r in full["records"]] == [0, 5, 10, 15, 20]
    part = _report(capsys, "--model", factory, "--train", "10", "--every", "5", "--lr", "0.5",
                   "--out", str(tmp_path / "part"), "--k", "2")
    assert [r["step"] for r in part["records"]] == [0, 5, 10]
    resumed = _report(capsys, "--model", factory, "--train", "20", "--every", "5", "--lr", "0.5",
                      "--out", str(tmp_path / "part"), "--k", "2", "--resume")
    assert resumed["records"] == full["records"]
    assert resumed["training_losses"] == pytest.approx(full["training_losses"], rel=1e-12)
    assert resumed["final"]["top_eigenvalues"] == pytest.approx(full["final"]["top_eigenvalues"], rel=1e-10)


def test_report_bad_inputs(factory, tmp_path, capsys):
    assert main(["report", "--model", factory, "--checkpoint", str(tmp_path / "nope.pt"), "--quiet"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["report", "--model", factory, "--resume", "--quiet"]) == 2
    assert "--resume continues a --train run" in capsys.readouterr().err
    assert main(["report", "--model", factory, "--train", "-3", "--quiet"]) == 2
    assert "--train must be >= 0" in capsys.readouterr().err
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert main(["report", "--model", factory, "--checkpoint", str(tmp_path / "bad.pt"), "--quiet"]) == 2
    assert "weights-only" in capsys.readouterr().err


class _NotATensor:
    """Pickled by torch.save as a class: weights_only loading refuses it (no code runs)."""


def _damage(kind, log):
    ckpt = log / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    jsonl = log / "sharpness.jsonl"
    lines = jsonl.read_text().splitlines()
    if kind == "empty checkpoint":
        ckpt.write_bytes(b"")
    elif kind == "truncated checkpoint":
        ckpt.write_bytes(ckpt.read_bytes()[:200])
    elif kind == "hostile pickle":
        torch.save({"step": 10, "payload": _NotATensor()}, ckpt)
    elif kind == "missing keys":
        torch.save({"step": state["step"], "lr": state["lr"]}, ckpt)
    elif kind == "wrong shapes":
        state["model"] = {k: torch.zeros(2, 2, dtype=torch.float64) for k in state["model"]}
        torch.save(state, ckpt)
    elif kind == "negative step":
        torch.save({**state, "step": -5}, ckpt)
    elif kind == "step beyond the run":
        torch.save({**state, "step": 1000}, ckpt)
    elif kind == "truncated losses":
        torch.save({**state, "training_losses": state["training_losses"][:3]}, ckpt)
    elif kind == "non-integer step in the log":
        rec = json.loads(lines[1])
        rec["step"] = "five"
        jsonl.write_text("\n".join([lines[0], json.dumps(rec), *lines[2:]]) + "\n")
    elif kind == "a list line":
        jsonl.write_text("\n".join([lines[0], "[1, 2, 3]", *lines[1:]]) + "\n")
    elif kind == "NaN lambda_max":
        rec = json.loads(lines[1])
        rec["lambda_max"] = float("nan")
        jsonl.write_text("\n".join([lines[0], json.dumps(rec), *lines[2:]]) + "\n")
    elif kind == "bad density line":
        (log / "density.jsonl").write_text('{"step": 5, "grid": [0, 1], "density": [1]}\n{"step": 10}\n')
    elif kind == "log is a file":
        import shutil

        shutil.rmtree(log)
        log.write_text("not a folder")
    else:
        raise AssertionError(kind)


_DAMAGE = {  # kind -> words the one-line error must contain
    "empty checkpoint": "is empty",
    "truncated checkpoint": "truncated or not a torch.save file",
    "hostile pickle": "refused unread",
    "missing keys": "not a training checkpoint",
    "wrong shapes": "does not fit this model",
    "negative step": "has step -5, not a non-negative integer",
    "step beyond the run": "at step 1000, beyond the 20 training steps",
    "truncated losses": "one loss per step",
    "non-integer step in the log": "line 2 has step 'five'",
    "a list line": "line 2 is a JSON list",
    "NaN lambda_max": "has lambda_max = nan",
    "bad density line": "is not a density snapshot",
    "log is a file": "is a file, not a folder",
}


@pytest.mark.parametrize("kind", sorted(_DAMAGE))
def test_resume_refuses_a_damaged_log_in_one_line(factory, tmp_path, capsys, kind):
    out = tmp_path / "part"
    _report(capsys, "--model", factory, "--train", "10", "--every", "5", "--lr", "0.5", "--out", str(out), "--k", "2")
    _damage(kind, out / "log")
    rc = main(["report", "--model", factory, "--train", "20", "--every", "5", "--lr", "0.5", "--out", str(out),
               "--k", "2", "--resume", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert _DAMAGE[kind] in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
