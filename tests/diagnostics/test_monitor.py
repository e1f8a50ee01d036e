"""SharpnessMonitor against dense ground truth (eigvalsh), on problems whose Hessian is known."""

import json
import math
import warnings

import pytest
import torch

import hesse
from hesse.diagnostics import DiagonalCongruence, SharpnessMonitor, read_log, stability_limit
from hesse.testing.reference import dense_hessian_of_model


def _gd_step(model, loss_fn, data, opt):
    opt.zero_grad()
    loss = loss_fn(model(data[0]), data[1])
    loss.backward()
    opt.step()
    return float(loss.detach())


@pytest.mark.parametrize("factor, status", [(0.8, "stable"), (1.2, "unstable")])
def test_quadratic_flags_match_gd_behaviour(linear_regression, factor, status):
    # lr = factor * 2 / lambda_max, so lambda_max / (2/lr) = factor exactly
    p = linear_regression
    lr = factor * 2 / p["lambda_max"]
    opt = torch.optim.SGD(p["model"].parameters(), lr=lr)
    mon = SharpnessMonitor(p["model"], p["loss_fn"], p["data"], every=1, progress=False, tol=1e-8)
    losses = [_gd_step(p["model"], p["loss_fn"], p["data"], opt) for _ in range(60)]
    rec = mon.step(opt)
    # the Hessian of a quadratic is constant: dense eigvalsh is exact; 1e-10 relative covers float64
    # round-off in forming 2XᵀX/N and the eigensolver
    assert rec.lambda_max == pytest.approx(p["lambda_max"], rel=1e-10)
    assert rec.stability_limit == pytest.approx(2 / lr, rel=1e-14)
    assert rec.sharpness_ratio == pytest.approx(factor, rel=1e-10)
    assert rec.status == status and rec.flags[0] == status
    # ground truth of the flag: GD really converges below the limit and diverges above it
    if status == "stable":
        assert losses[-1] < losses[0]
    else:
        assert losses[-1] > 100 * losses[0]


def test_every_and_step_counter(linear_regression):
    p = linear_regression
    opt = torch.optim.SGD(p["model"].parameters(), lr=0.01)
    mon = SharpnessMonitor(p["model"], p["loss_fn"], p["data"], every=3, progress=False)
    out = [mon.step(opt) for _ in range(7)]
    assert [r is not None for r in out] == [False, False, True, False, False, True, False]
    assert [r.step for r in mon.records] == [3, 6]


def test_mlp_lambda_max_matches_dense_hessian(small_mlp):
    p = small_mlp
    opt = torch.optim.SGD(p["model"].parameters(), lr=0.5)
    for _ in range(5):
        _gd_step(p["model"], p["loss_fn"], p["data"], opt)
    mon = SharpnessMonitor(p["model"], p["loss_fn"], p["data"], k=3, negative=True, progress=False, tol=1e-8)
    rec = mon.measure(opt)
    X, Y = p["data"]
    H = dense_hessian_of_model(p["model"], p["loss_fn"], X, Y)
    n = int(math.isqrt(H.numel()))
    lam = torch.linalg.eigvalsh(H.reshape(n, n))
    # residual tol 1e-8 * ||H|| gives eigenvalue errors far below 1e-8 relative (Parlett, Thm 11.7.1)
    assert rec.lambda_max == pytest.approx(float(lam[-1]), rel=1e-8)
    assert rec.top_eigenvalues == pytest.approx(lam[-3:].flip(0).tolist(), rel=1e-7)
    assert rec.lambda_min == pytest.approx(float(lam[0]), abs=1e-7 * float(lam[-1]))
    assert rec.converged and rec.grad_norm > 0


def test_warm_start_uses_fewer_products_than_cold(small_mlp):
    p = small_mlp
    opt = torch.optim.SGD(p["model"].parameters(), lr=0.3)
    warm = SharpnessMonitor(p["model"], p["loss_fn"], p["data"], every=1, progress=False)
    warm_counts, cold_counts = [], []
    for _ in range(6):
        _gd_step(p["model"], p["loss_fn"], p["data"], opt)
        rec = warm.step(opt)
        cold = SharpnessMonitor(p["model"], p["loss_fn"], p["data"], every=1, progress=False).measure(opt)
        # same eigenvalue from both starts (tol 1e-4 on the residual: eigenvalue to ~1e-7 relative)
        assert rec.lambda_max == pytest.approx(cold.lambda_max, rel=1e-5)
        warm_counts.append(rec.num_matvecs)
        cold_counts.append(cold.num_matvecs)
    # after the first check (a cold start for both), every warm check is cheaper than the cold one
    assert warm_counts[0] == cold_counts[0]
    assert all(w < c for w, c in zip(warm_counts[1:], cold_counts[1:])), (warm_counts, cold_counts)
    assert sum(warm_counts[1:]) <= 0.6 * sum(cold_counts[1:]), (warm_counts, cold_counts)


def test_adam_preconditioned_sharpness_matches_dense(small_mlp):
    p = small_mlp
    opt = torch.optim.Adam(p["model"].parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    for _ in range(3):
        _gd_step(p["model"], p["loss_fn"], p["data"], opt)
    mon = SharpnessMonitor(p["model"], p["loss_fn"], p["data"], progress=False, tol=1e-8)
    rec = mon.measure(opt)
    X, Y = p["data"]
    H = dense_hessian_of_model(p["model"], p["loss_fn"], X, Y)
    n = int(math.isqrt(H.numel()))
    H = H.reshape(n, n)
    # P = (1 - beta1^t) diag(sqrt(v_hat) + eps), Cohen et al. 2022; eigenvalues of P^-1 H
    Ps = []
    for prm in p["model"].parameters():
        st = opt.state[prm]
        t = float(st["step"])
        v_hat = st["exp_avg_sq"].reshape(-1) / (1 - 0.999**t)
        Ps.append((1 - 0.9**t) * (v_hat.sqrt() + 1e-8))
    s = torch.cat(Ps).rsqrt()
    lam = torch.linalg.eigvalsh(s[:, None] * H * s[None, :])
    assert rec.operator == "P^-1/2 H P^-1/2"
    assert rec.lambda_max == pytest.approx(float(lam[-1]), rel=1e-7)
    assert rec.stability_limit == pytest.approx(38 / 1e-3, rel=1e-12)  # (2 + 2 beta1) / ((1 - beta1) lr)


def test_stability_limit_of_optimizers():
    w = [torch.nn.Parameter(torch.zeros(2))]
    assert stability_limit(torch.optim.SGD(w, lr=0.1))[0] == pytest.approx(20.0)
    assert stability_limit(torch.optim.SGD(w, lr=0.1, momentum=0.9))[0] == pytest.approx(38.0)
    assert stability_limit(torch.optim.Adam(w, lr=0.01))[0] == pytest.approx(3800.0)
    limit, lr, kind = stability_limit(torch.optim.RMSprop(w, lr=0.5))
    assert (limit, lr, kind) == (4.0, 0.5, "gd-limit")


def test_diagonal_congruence_is_dense_congruence():
    A = torch.tensor([[2.0, 1.0, 0.0], [1.0, -1.0, 0.5], [0.0, 0.5, 3.0]], dtype=torch.float64)
    d = torch.tensor([1.0, 4.0, 0.25], dtype=torch.float64)
    op = DiagonalCongruence(hesse.DenseOperator(A), d)
    S = torch.diag(d.sqrt())
    assert torch.allclose(op.to_dense(), S @ A @ S, atol=1e-15)
    with pytest.raises(ValueError, match="nonnegative"):
        DiagonalCongruence(hesse.DenseOperator(A), -d)


def test_saddle_plateau_flag():
    # model a * b * x at a = b = 0: zero gradient; Hessian [[0, -2c], [-2c, 0]] with c = mean(x y)
    class Product(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
            self.b = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

        def forward(self, x):
            return self.a * self.b * x

    x = torch.linspace(0.5, 1.5, 16, dtype=torch.float64)
    y = 2.0 * x
    c = float((x * y).mean())
    model = Product()
    mon = SharpnessMonitor(model, torch.nn.MSELoss(), (x, y), negative=True, progress=False)
    rec = mon.measure(lr=0.01)
    assert rec.lambda_min == pytest.approx(-2 * c, rel=1e-12)  # closed form
    assert rec.lambda_max == pytest.approx(2 * c, rel=1e-12)
    assert rec.grad_norm == 0.0
    assert "saddle_plateau" in rec.flags
    # away from the saddle, with a large gradient, no saddle flag
    with torch.no_grad():
        model.a.fill_(0.3)
        model.b.fill_(0.2)
    assert "saddle_plateau" not in mon.measure(lr=0.01, step=1).flags


def _run(p, log_dir, steps, resume=False, start=0, ckpt=None, stop_after=None):
    """Train ``steps`` GD steps with a monitor; checkpoint model+optimizer at every check."""
    opt = torch.optim.SGD(p["model"].parameters(), lr=0.4, momentum=0.5)
    if ckpt is not None and resume:
        state = torch.load(ckpt, weights_only=True)
        p["model"].load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
    mon = SharpnessMonitor(p["model"], p["loss_fn"], p["data"], every=4, k=2, negative=True, trace=True,
                           density=True, density_steps=10, trace_matvecs=8, log_dir=log_dir, resume=resume,
                           progress=False)
    for step in range(mon.num_steps + 1, steps + 1):
        _gd_step(p["model"], p["loss_fn"], p["data"], opt)
        rec = mon.step(opt)
        if rec is not None and ckpt is not None:
            torch.save({"model": p["model"].state_dict(), "opt": opt.state_dict()}, ckpt)
        if stop_after is not None and step == stop_after:
            break  # "interrupted"
    mon.close()
    return mon


def test_interrupted_then_resumed_log_equals_uninterrupted(small_mlp, tmp_path):
    from hesse.demo_models import digits_mlp

    p0 = dict(small_mlp)
    p0["model"] = digits_mlp(hidden=16, dtype=torch.float64)
    full = _run(p0, tmp_path / "full", 14)
    assert [r.step for r in full.records] == [4, 8, 12]
    p1 = dict(small_mlp)
    p1["model"] = digits_mlp(hidden=16, dtype=torch.float64)
    ckpt = tmp_path / "ckpt.pt"
    part = _run(p1, tmp_path / "part", 14, ckpt=ckpt, stop_after=10)  # checks at 4, 8; dies at 10
    assert [r.step for r in part.records] == [4, 8]
    # a crash in the middle of a write leaves a partial line: it must be dropped on resume
    with open(tmp_path / "part" / "sharpness.jsonl", "a") as fh:
        fh.write('{"step": 12, "lambda_m')
    p2 = dict(small_mlp)
    p2["model"] = digits_mlp(hidden=16, dtype=torch.float64)
    resumed = _run(p2, tmp_path / "part", 14, resume=True, ckpt=ckpt)
    assert [r.step for r in resumed.records] == [4, 8, 12]
    a = read_log(tmp_path / "full")
    b = read_log(tmp_path / "part")
    assert a == b  # every field equal, products counts included (warm-start vector restored)
    csv_a = (tmp_path / "full" / "sharpness.csv").read_text()
    assert csv_a == (tmp_path / "part" / "sharpness.csv").read_text()
    dens_a = [json.loads(line) for line in (tmp_path / "full" / "density.jsonl").read_text().splitlines()]
    dens_b = [json.loads(line) for line in (tmp_path / "part" / "density.jsonl").read_text().splitlines()]
    assert dens_a == dens_b and [d["step"] for d in dens_a] == [4, 8, 12]


def test_log_files_contents(linear_regression, tmp_path):
    p = linear_regression
    opt = torch.optim.SGD(p["model"].parameters(), lr=0.1)
    with SharpnessMonitor(p["model"], p["loss_fn"], p["data"], every=2, log_dir=tmp_path, progress=False) as mon:
        for _ in range(6):
            _gd_step(p["model"], p["loss_fn"], p["data"], opt)
            mon.step(opt)
    rows = (tmp_path / "sharpness.csv").read_text().splitlines()
    assert rows[0].split(",")[:3] == ["step", "loss", "grad_norm"]
    assert len(rows) == 1 + 3
    recs = read_log(tmp_path)
    assert [r["step"] for r in recs] == [2, 4, 6]
    assert recs[-1]["lambda_max"] == pytest.approx(p["lambda_max"], rel=1e-6)
    import importlib.util

    assert mon.log.tensorboard == (importlib.util.find_spec("tensorboard") is not None)


def test_tensorboard_scalars_equal_the_records(linear_regression, tmp_path):
    """When TensorBoard is installed the monitor's scalars, read back from the event files with
    TensorBoard's own reader, equal the JSON-lines records (float32 in the event files: 1e-6)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    p = linear_regression
    opt = torch.optim.SGD(p["model"].parameters(), lr=0.1)
    with SharpnessMonitor(p["model"], p["loss_fn"], p["data"], every=2, log_dir=tmp_path, progress=False) as mon:
        for _ in range(6):
            _gd_step(p["model"], p["loss_fn"], p["data"], opt)
            mon.step(opt)
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    events = acc.Scalars("hesse/lambda_max")
    recs = read_log(tmp_path)
    assert [e.step for e in events] == [r["step"] for r in recs] == [2, 4, 6]
    for e, r in zip(events, recs):
        assert e.value == pytest.approx(r["lambda_max"], rel=1e-6)
    assert "hesse/stability_limit" in acc.Tags()["scalars"]


def test_bad_inputs(linear_regression, tmp_path):
    p = linear_regression
    args = (p["model"], p["loss_fn"], p["data"])
    with pytest.raises(ValueError, match="every"):
        SharpnessMonitor(*args, every=0)
    with pytest.raises(ValueError, match="k must"):
        SharpnessMonitor(*args, k=0)
    with pytest.raises(ValueError, match="eos_band"):
        SharpnessMonitor(*args, eos_band=1.5)
    with pytest.raises(ValueError, match="resume=True needs log_dir"):
        SharpnessMonitor(*args, resume=True)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        SharpnessMonitor("net", p["loss_fn"], p["data"])
    mon = SharpnessMonitor(*args, progress=False)
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        mon.step("sgd")
    with pytest.raises(ValueError, match="needs the optimizer"):
        mon.measure()
    with pytest.raises(ValueError, match="lr must be a positive"):
        mon.measure(lr=-1.0)
    with torch.no_grad():
        p["model"].weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="diverged"):
        mon.measure(lr=0.1)


def test_param_groups_with_different_lrs_fold_into_the_operator():
    # GD with per-group rates eta_i is stable iff lambda_max(S^1/2 H S^1/2) < 2/eta_0, S = diag(eta_i/eta_0)
    gen = torch.Generator().manual_seed(3)
    X = torch.randn(32, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(32, 1, generator=gen, dtype=torch.float64)
    model = torch.nn.Linear(3, 1).double()
    opt = torch.optim.SGD([{"params": [model.weight], "lr": 0.1}, {"params": [model.bias], "lr": 0.3}])
    rec = SharpnessMonitor(model, torch.nn.MSELoss(), (X, y), progress=False).measure(opt)
    A = torch.cat([X, torch.ones(32, 1, dtype=torch.float64)], dim=1)
    H = 2 * A.T @ A / 32  # closed form: parameters (w1, w2, w3, b)
    s = torch.tensor([1.0, 1.0, 1.0, 3.0], dtype=torch.float64).sqrt()
    lam = torch.linalg.eigvalsh(s[:, None] * H * s[None, :])
    assert rec.lambda_max == pytest.approx(float(lam[-1]), rel=1e-10)
    assert rec.stability_limit == pytest.approx(20.0)
    assert rec.operator.startswith("S^1/2 H S^1/2")


class _TwoBlocks(torch.nn.Module):
    """Outputs (x[:, :3] @ a, x[:, 3:] @ b): under MSE the Hessian is block-diagonal in (a, b)."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(5)
        self.a = torch.nn.Parameter(torch.randn(3, generator=gen, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.randn(2, generator=gen, dtype=torch.float64))

    def forward(self, x):
        return torch.stack([x[:, :3] @ self.a, x[:, 3:] @ self.b], dim=1)


def _two_block_problem():
    gen = torch.Generator().manual_seed(7)
    X = torch.randn(40, 5, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 1.0, 1.0, 2.0, 2.0],
                                                                            dtype=torch.float64)
    Y = torch.randn(40, 2, generator=gen, dtype=torch.float64)
    model = _TwoBlocks()
    H = dense_hessian_of_model(model, torch.nn.MSELoss(), X, Y).reshape(5, 5)
    assert torch.allclose(H[:3, 3:], torch.zeros(3, 2, dtype=torch.float64))  # no coupling
    return model, (X, Y), H


_SGD_GROUPS = [  # per-group SGD options, group 0 = a, group 1 = b
    ({"momentum": 0.0}, {"momentum": 0.9}),
    ({"momentum": 0.9}, {"momentum": 0.0}),
    ({"momentum": 0.5, "dampening": 0.5}, {"momentum": 0.5}),
    ({"momentum": 0.9, "nesterov": True}, {"momentum": 0.0}),
    ({"momentum": 0.0}, {"momentum": 0.9, "nesterov": True}),
    ({"momentum": 0.9, "lr": 0.02}, {"momentum": 0.0, "lr": 0.2}),
]


def _sgd_group_limit(lr, momentum=0.0, dampening=0.0, nesterov=False):
    """Heavy-ball stability (Polyak 1964): alpha lambda < 2 + 2 beta; Nesterov's look-ahead (1 + 2 mu)."""
    if nesterov:
        return (2 + 2 * momentum) / ((1 + 2 * momentum) * lr)
    return (2 + 2 * momentum) / ((1 - dampening if momentum else 1.0) * lr)


@pytest.mark.parametrize("groups", _SGD_GROUPS)
def test_sgd_per_group_momenta_give_the_largest_group_ratio(groups):
    # ground truth: block-diagonal H, so the iteration is stable iff every group is; the ratio is
    # max_i lambda_max(H_ii) / limit_i (dense eigvalsh; 1e-9 covers the float64 eigensolve)
    model, data, H = _two_block_problem()
    specs = [{"lr": 0.1, **g} for g in groups]
    opt = torch.optim.SGD([{"params": [model.a], **specs[0]}, {"params": [model.b], **specs[1]}])
    rec = SharpnessMonitor(model, torch.nn.MSELoss(), data, progress=False, tol=1e-10).measure(opt)
    blocks = [torch.linalg.eigvalsh(H[:3, :3])[-1], torch.linalg.eigvalsh(H[3:, 3:])[-1]]
    ratios = [float(lam) / _sgd_group_limit(**spec) for lam, spec in zip(blocks, specs)]
    assert rec.sharpness_ratio == pytest.approx(max(ratios), rel=1e-9)
    assert rec.stability_limit == pytest.approx(_sgd_group_limit(**specs[0]), rel=1e-12)


@pytest.mark.parametrize("groups", _SGD_GROUPS)
@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_sgd_per_group_ratio_predicts_what_the_optimizer_does(groups, factor):
    # the definition: run torch's SGD itself with every lr scaled so that the monitor's ratio is
    # `factor`; below 1 the loss falls to the minimum, above 1 it blows up
    model, data, _ = _two_block_problem()
    specs = [{"lr": 0.1, **g} for g in groups]
    opt = torch.optim.SGD([{"params": [model.a], **specs[0]}, {"params": [model.b], **specs[1]}])
    mon = SharpnessMonitor(model, torch.nn.MSELoss(), data, progress=False, tol=1e-10)
    ratio = mon.measure(opt).sharpness_ratio
    for g in opt.param_groups:
        g["lr"] *= factor / ratio
    losses = [_gd_step(model, torch.nn.MSELoss(), data, opt) for _ in range(400)]
    if factor < 1:
        assert losses[-1] < losses[0]
    else:
        assert losses[-1] > 1e3 * losses[0]


@pytest.mark.parametrize("optimizer", [torch.optim.Adam, torch.optim.AdamW])
@pytest.mark.parametrize("beta1s", [(0.9, 0.0), (0.0, 0.9), (0.5, 0.9)])
def test_adam_per_group_betas_give_the_largest_group_ratio(optimizer, beta1s):
    # per group P_i = (1 - beta1_i^t) diag(sqrt(v_hat) + eps) and limit (2 + 2 beta1_i)/((1 - beta1_i) lr);
    # H block-diagonal, so the ratio is max_i lambda_max(P_i^-1/2 H_ii P_i^-1/2) / limit_i
    model, data, _ = _two_block_problem()
    groups = [{"params": [model.a], "betas": (beta1s[0], 0.999)}, {"params": [model.b], "betas": (beta1s[1], 0.99)}]
    opt = optimizer(groups, lr=1e-3)
    for _ in range(3):
        _gd_step(model, torch.nn.MSELoss(), data, opt)
    rec = SharpnessMonitor(model, torch.nn.MSELoss(), data, progress=False, tol=1e-10).measure(opt)
    H = dense_hessian_of_model(model, torch.nn.MSELoss(), *data).reshape(5, 5)
    ratios = []
    for (lo, hi), group in zip([(0, 3), (3, 5)], opt.param_groups):
        st = opt.state[group["params"][0]]
        beta1, beta2 = group["betas"]
        t = float(st["step"])
        P = (1 - beta1**t) * ((st["exp_avg_sq"] / (1 - beta2**t)).sqrt() + group["eps"])
        s = P.rsqrt()
        lam = torch.linalg.eigvalsh(s[:, None] * H[lo:hi, lo:hi] * s[None, :])[-1]
        ratios.append(float(lam) * (1 - beta1) * group["lr"] / (2 + 2 * beta1))
    assert rec.sharpness_ratio == pytest.approx(max(ratios), rel=1e-9)


def test_measure_at_chosen_steps_without_step_calls(linear_regression):
    # measuring in one's own loop: measure(opt) twice without step() used to record nothing the
    # second time, silently; now it warns and names step=, and step= records each point
    p = linear_regression
    opt = torch.optim.SGD(p["model"].parameters(), lr=0.01)
    mon = SharpnessMonitor(p["model"], p["loss_fn"], p["data"], progress=False)
    assert mon.measure(opt) is not None
    _gd_step(p["model"], p["loss_fn"], p["data"], opt)
    with pytest.warns(UserWarning, match="pass step="):
        assert mon.measure(opt) is None
    for s in (5, 9):
        assert mon.measure(opt, step=s).step == s
    with pytest.warns(UserWarning, match="step 7 is not after the last record's step 9"):
        assert mon.measure(opt, step=7) is None
    assert [r.step for r in mon.records] == [0, 5, 9]
    for bad in (-1, 2.5, "3", True):
        with pytest.raises(ValueError, match="step must be a non-negative int"):
            mon.measure(opt, step=bad)


def test_resumed_log_skips_logged_steps_silently(linear_regression, tmp_path):
    p = linear_regression
    opt = torch.optim.SGD(p["model"].parameters(), lr=0.01)
    with SharpnessMonitor(p["model"], p["loss_fn"], p["data"], every=2, progress=False, log_dir=str(tmp_path)) as mon:
        mon.measure(opt)
        for _ in range(4):
            mon.step(opt)
    with SharpnessMonitor(p["model"], p["loss_fn"], p["data"], every=2, progress=False, log_dir=str(tmp_path),
                          resume=True) as mon:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert mon.measure(opt, step=0) is None  # in the resumed log: no warning
        assert [r.step for r in mon.records] == [0, 2, 4]


@pytest.mark.parametrize("at", [[3, 7, 8], (1,), range(0, 20, 5)])
def test_at_measures_exactly_the_listed_steps(linear_regression, at):
    p = linear_regression
    opt = torch.optim.SGD(p["model"].parameters(), lr=0.01)
    mon = SharpnessMonitor(p["model"], p["loss_fn"], p["data"], at=at, progress=False)
    for _ in range(20):
        mon.step(opt)
    assert [r.step for r in mon.records] == sorted(s for s in at if 1 <= s <= 20)


def test_log_schedule_steps(linear_regression):
    p = linear_regression
    opt = torch.optim.SGD(p["model"].parameters(), lr=0.01)
    mon = SharpnessMonitor(p["model"], p["loss_fn"], p["data"], schedule="log", progress=False)
    for _ in range(130):
        mon.step(opt)
    # by definition: the distinct values of round(10**(j/10)) up to 130
    expected = sorted({round(10 ** (j / 10)) for j in range(30)} & set(range(1, 131)))
    assert [r.step for r in mon.records] == expected
    assert expected[:12] == [1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 20, 25]


@pytest.mark.parametrize("kwargs, match", [
    ({"every": 5, "at": [1]}, "give one of every, at and schedule"),
    ({"at": [1], "schedule": "log"}, "give one of every, at and schedule"),
    ({"schedule": "linear"}, "schedule must be 'log'"),
    ({"at": [1, -2]}, "non-negative integer steps"),
    ({"at": [1.5]}, "non-negative integer steps"),
    ({"at": []}, "empty"),
    ({"at": 10}, "sequence of step numbers"),
])
def test_schedule_options_refused(linear_regression, kwargs, match):
    p = linear_regression
    with pytest.raises((ValueError, TypeError), match=match):
        SharpnessMonitor(p["model"], p["loss_fn"], p["data"], progress=False, **kwargs)
