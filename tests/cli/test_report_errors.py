"""``hesse report``: diverged runs, stale reports, generator data, the PyHessian-style flags."""

import json
import textwrap

import pytest

import hesse
from hesse.cli.main import main

FACTORIES = textwrap.dedent("""
    import torch

    def _mlp():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 3)).double()

    def _xy(n, s):
        g = torch.Generator().manual_seed(s)
        return torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)

    def make():
        return {"model": _mlp(), "loss_fn": torch.nn.CrossEntropyLoss(), "data": _xy(30, 0)}

    def batched():
        return {"model": _mlp(), "loss_fn": torch.nn.CrossEntropyLoss(), "data": [_xy(8, s) for s in range(4)]}

    def generator():
        return {"model": _mlp(), "loss_fn": torch.nn.CrossEntropyLoss(), "data": (_xy(8, s) for s in range(3))}
""")
N = 4 * 3 + 3 + 3 * 3 + 3  # 27 parameters



@pytest.fixture()
def mf(tmp_path):
    p = tmp_path / "factories.py"
    p.write_text(FACTORIES)
    return p



def test_diverged_run_is_diagnosed_as_diverged(mf, tmp_path, capsys):
    # lr far above 2/lambda_max: the loss explodes; never called the edge of stability
    rc = main(["report", "--model", f"{mf}:make", "--train", "12", "--lr", "1000", "--every", "4", "--k", "2",
               "--out", str(tmp_path / "r"), "--quiet"])
    cap = capsys.readouterr()
    text = cap.out + cap.err
    assert rc in (2, 3), text  # 3: report written, training diverged; 2: the final point not analysable
    assert "diverged" in text and "edge of stability" not in text.lower()
    if rc == 3:
        payload = json.loads((tmp_path / "r" / "report.json").read_text())
        assert payload["sharpness"]["diverged"]
        summary = (tmp_path / "r" / "summary.md").read_text()
        assert "diverged" in summary and "edge of stability" not in summary.lower()


def _old_report(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps({"final": {"loss": 0.01}, "files": ["report.json"]}))
    (folder / "summary.md").write_text("# an earlier, successful report\n")


def test_failed_run_removes_the_stale_report(mf, tmp_path, capsys, monkeypatch):
    out = tmp_path / "r"
    _old_report(out)

    def fails(*a, **k):
        raise ValueError("the final-point analysis failed")

    # after training wrote a new log into r/log
    import hesse.diagnostics.report as analysis

    monkeypatch.setattr(analysis, "summarize", fails)
    rc = main(["report", "--model", f"{mf}:make", "--train", "2", "--lr", "0.5", "--every", "2", "--k", "2",
               "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "analysis failed" in err
    assert (out / "log" / "sharpness.jsonl").is_file()
    assert not (out / "report.json").exists() and not (out / "summary.md").exists()


def test_failure_while_writing_leaves_no_partial_or_stale_files(mf, tmp_path, capsys, monkeypatch):
    import hesse.plot.report as plot_report

    out = tmp_path / "r"
    _old_report(out)

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plot_report, "plot_top_eigenvalues", disk_full)
    rc = main(["report", "--model", f"{mf}:make", "--k", "2", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "No space left on device" in err
    names = sorted(p.name for p in out.iterdir())
    assert "report.json" not in names and "summary.md" not in names
    assert not any(".partial" in n for n in names) and "density.png" not in names


@pytest.mark.parametrize("train", [0, 10])
def test_generator_data(load_factory, mf, tmp_path, capsys, train):
    rc = main(["report", "--model", f"{mf}:generator", "--train", str(train), "--lr", "0.5", "--every", "5",
               "--k", "2", "--out", str(tmp_path / "r"), "--quiet", "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    payload = json.loads(cap.out)
    assert len(payload["training_losses"]) == train
    if not train:
        d = load_factory(mf, "generator")
        ref = hesse.eigsh(hesse.HessianOperator(d["model"], d["loss_fn"], list(d["data"])), k=2)
        assert payload["final"]["top_eigenvalues"] == pytest.approx(ref.values.tolist(), rel=1e-9)


def test_batches_curvature_device_flags(load_factory, mf, tmp_path, capsys):
    rc = main(["report", "--model", f"{mf}:batched", "--batches", "2", "--curvature", "ggn", "--device", "cpu",
               "--k", "3", "--out", str(tmp_path / "r"), "--quiet", "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    payload = json.loads(cap.out)
    d = load_factory(mf, "batched")
    ref = hesse.eigsh(hesse.GGNOperator(d["model"], d["loss_fn"], d["data"][:2]), k=3)
    # n = 27: dense eigensolver on both sides, equal to rounding
    assert payload["curvature"] == "ggn"
    assert payload["final"]["top_eigenvalues"] == pytest.approx(ref.values.tolist(), rel=1e-9)


@pytest.mark.parametrize("argv, text", [
    (["--k", "600"], f"exceeds the number of parameters n={N}"),
    (["--out", "{tmp}/missing/deeper/r"], "does not exist"),
    (["--device", "cuda:99"], "--device cuda:99"),
    (["--device", "meta"], "--device meta: meta tensors hold no values"),
    (["--batches", "7"], "only 1 batch"),
])
def test_report_option_errors(mf, tmp_path, capsys, argv, text):
    argv = [a.format(tmp=tmp_path) for a in argv]
    rc = main(["report", "--model", f"{mf}:make", "--out", str(tmp_path / "r"), *argv, "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and text in err and len(err.strip().splitlines()) == 1, err
