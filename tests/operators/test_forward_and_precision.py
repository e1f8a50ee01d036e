"""Any forward, any loss, lower precision, token-level losses and frozen embedding rows.

Ground truth is float64 throughout: ``torch.func.hessian`` of the flat full-data loss, ``J^T H_L J``
from ``torch.func.jacrev`` for the GGN, central differences of the autograd gradient. float64
products agree with these to rounding (1e-10 relative to the matrix scale unless stated).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.func import functional_call

import hesse

# ----------------------------------------------------------------------------- helpers


def _flat(model, names=None):
    named = [(n, p) for n, p in model.named_parameters() if names is None or n in names]
    return [n for n, _ in named], [p.shape for _, p in named], torch.cat(
        [p.detach().reshape(-1) for _, p in named])


def _state_of(model, names, shapes, theta):
    parts = torch.split(theta, [s.numel() for s in shapes])
    state = {n: p.detach() for n, p in model.named_parameters()}
    state.update({n: t.reshape(s) for n, t, s in zip(names, parts, shapes)})
    return state


def _rel(a, b):
    return float((a - b).norm() / b.norm())


# ----------------------------------------------------------------------------- forward=


@dataclass
class _Output:
    """What a Hugging Face model returns: an object holding ``logits`` (and maybe ``loss``)."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None


class _HFLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(5, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x, labels=None):
        logits = self.head(torch.tanh(self.body(x)))
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return _Output(logits=logits, loss=loss)


def _hf_data(n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _dense_ref(model, X, y):
    names, shapes, theta = _flat(model)

    def L(t):
        return nn.functional.cross_entropy(functional_call(model, _state_of(model, names, shapes, t), (X,)).logits, y)

    return torch.func.hessian(L)(theta)


@pytest.mark.parametrize("cls", [hesse.HessianOperator, hesse.GGNOperator])
def test_forward_callable_reads_logits(cls):
    torch.manual_seed(0)
    model, (X, y) = _HFLike().double(), _hf_data()
    op = cls(model, nn.CrossEntropyLoss(), (X, y), forward=lambda m, x: m(x).logits)
    ref = _dense_ref(model, X, y)
    if cls is hesse.GGNOperator:  # a reference GGN: J^T H_L J
        names, shapes, theta = _flat(model)

        def z(t):
            return functional_call(model, _state_of(model, names, shapes, t), (X,)).logits

        J = torch.func.jacrev(z)(theta).reshape(-1, theta.numel())
        HL = torch.func.hessian(lambda zz: nn.functional.cross_entropy(zz, y))(z(theta)).reshape(J.shape[0], -1)
        ref = J.T @ HL @ J
    assert torch.allclose(op.to_dense(), ref, atol=1e-12 * float(ref.abs().max()) + 1e-14)


@pytest.mark.parametrize("cls", [hesse.HessianOperator, hesse.GGNOperator, hesse.FisherOperator])
def test_default_forward_refuses_output_objects_and_names_the_fix(cls):
    model, (X, y) = _HFLike().double(), _hf_data()
    with pytest.raises(ValueError, match=r"forward=lambda m, batch: m\(\*\*batch\)\.logits"):
        cls(model, nn.CrossEntropyLoss(), (X, y))


def test_forward_returning_a_tuple_is_refused():
    model, (X, y) = _HFLike().double(), _hf_data()
    with pytest.raises(ValueError, match="forward returned a tuple"):
        hesse.HessianOperator(model, nn.CrossEntropyLoss(), (X, y), forward=lambda m, x: (m(x).logits,))


# ----------------------------------------------------------------------------- batch_loss=


def _batches(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        out.append({"x": torch.randn(n, 5, generator=g, dtype=torch.float64),
                    "labels": torch.randint(0, 3, (n,), generator=g)})
    return out


@pytest.mark.parametrize("container", ["dict", "tuple"])
def test_batch_loss_weights_unequal_batches_by_size(container):
    """L = Σ_b n_b L_b / Σ_b n_b is the mean over all samples: the full-data Hessian."""
    torch.manual_seed(1)
    model = _HFLike().double()
    batches = _batches([3, 5, 2])
    if container == "dict":
        data = batches
        op = hesse.HessianOperator(model, data=data, batch_loss=lambda m, b: m(**b).loss)
    else:
        data = [(b["x"], b["labels"]) for b in batches]
        op = hesse.HessianOperator(model, data=data, batch_loss=lambda m, b: m(b[0], labels=b[1]).loss)
    X = torch.cat([b["x"] for b in batches])
    y = torch.cat([b["labels"] for b in batches])
    ref = _dense_ref(model, X, y)
    assert op.num_samples == 10
    assert torch.allclose(op.to_dense(), ref, atol=1e-12)


def test_batch_loss_with_batch_size_callable():
    """batch_size=lambda b: 1 gives every batch one vote: the mean of the batch means."""
    torch.manual_seed(2)
    model = _HFLike().double()
    batches = _batches([2, 6])
    op = hesse.HessianOperator(model, data=batches, batch_loss=lambda m, b: m(**b).loss,
                               batch_size=lambda b: 1)
    ref = 0.5 * sum(_dense_ref(model, b["x"], b["labels"]) for b in batches)
    assert torch.allclose(op.to_dense(), ref, atol=1e-12)


@pytest.mark.parametrize("cls", [hesse.GGNOperator, hesse.FisherOperator])
def test_ggn_and_fisher_refuse_batch_loss(cls):
    model = _HFLike().double()
    with pytest.raises(ValueError, match="needs the model's outputs"):
        cls(model, data=_batches([3]), batch_loss=lambda m, b: m(**b).loss)


def test_loss_fn_and_batch_loss_exactly_one():
    model, data = _HFLike().double(), _batches([3])
    with pytest.raises(ValueError, match="not both"):
        hesse.HessianOperator(model, nn.CrossEntropyLoss(), data, batch_loss=lambda m, b: m(**b).loss)
    with pytest.raises(TypeError, match="batch_loss"):
        hesse.HessianOperator(model, data=data)


def test_batch_loss_returning_a_vector_is_refused():
    model, data = _HFLike().double(), _batches([3])
    with pytest.raises(ValueError, match="batch_loss must return a scalar"):
        hesse.HessianOperator(model, data=data, batch_loss=lambda m, b: m(b["x"]).logits.sum(1))


# ----------------------------------------------------------------------------- dtype=


def _deep_mlp(depth=4, width=8):
    torch.manual_seed(3)
    layers: list[nn.Module] = [nn.Linear(5, width), nn.Tanh()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), nn.Tanh()]
    layers += [nn.Linear(width, 3)]
    return nn.Sequential(*layers)


def _products_vs_float64(low, dtype, X, y, cls=hesse.HessianOperator):
    """Relative error of ``A V`` computed from the ``low``-precision model (in ``dtype``) against
    the float64 operator on the same (rounded) parameters and data."""
    ref_model = _deep_mlp()
    ref_model.load_state_dict({k: v.double() for k, v in low.state_dict().items()})
    ref_model.double()
    ref = cls(ref_model, nn.CrossEntropyLoss(), (X.double(), y))
    op = cls(low, nn.CrossEntropyLoss(), (X, y), dtype=dtype)
    V = torch.randn(ref.shape[0], 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = op.matmat(V.to(op.dtype)).double()
    return op, _rel(out, ref.matmat(V))


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cls", [hesse.HessianOperator, hesse.GGNOperator])
def test_low_precision_model_computed_in_float32(low, cls):
    """A model held in bf16/fp16 but computed in float32 agrees with the float64 operator on the
    rounded parameters to float32 accuracy: eps_32 = 1.2e-7 times a few layers and the sums over
    samples; measured about 1e-7, asserted at 1e-5."""
    model = _deep_mlp().to(low)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    X, y = torch.randn(16, 5).to(low), torch.randint(0, 3, (16,))
    op, err = _products_vs_float64(model, torch.float32, X, y, cls)
    assert op.dtype == torch.float32 and op.gradient.dtype == torch.float32
    assert err < 1e-5, err
    # the user's model is untouched: same dtype, same values
    for k, v in model.state_dict().items():
        assert v.dtype == low and torch.equal(v, before[k])


@pytest.mark.parametrize("low, eps", [(torch.bfloat16, 2.0**-8), (torch.float16, 2.0**-10)])
def test_low_precision_computed_in_its_own_dtype(low, eps):
    """Products computed in bf16/fp16 itself: the relative error is a few eps·sqrt(depth) (depth 4
    here; measured ≈ 0.3-1.5 eps·sqrt(4) for bf16 and fp16). Asserted below 8 eps·sqrt(depth), and
    the float32 computation of the same model must be far more accurate (so the test can fail)."""
    depth = 4
    model = _deep_mlp(depth).to(low)
    X, y = torch.randn(16, 5).to(low), torch.randint(0, 3, (16,))
    op, err = _products_vs_float64(model, None, X, y)
    assert op.dtype == low
    assert err < 8 * eps * depth**0.5, (err, eps)
    _, err32 = _products_vs_float64(model, torch.float32, X, y)
    assert err32 < 1e-2 * err


def test_dtype_must_be_floating():
    model, (X, y) = _HFLike().double(), _hf_data()
    with pytest.raises(TypeError, match="dtype"):
        hesse.HessianOperator(model, nn.CrossEntropyLoss(), (X, y), forward=lambda m, x: m(x).logits,
                              dtype=torch.int32)


# ----------------------------------------------------------------------------- token-level losses


class _TokenModel(nn.Module):
    """Token classifier over padded sequences: embedding, mask-aware context, per-token logits."""

    def __init__(self, vocab=7, dim=4, classes=3, padding_idx=None):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=padding_idx)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, input_ids, attention_mask):
        m = attention_mask.to(self.emb.weight.dtype).unsqueeze(-1)
        h = self.emb(input_ids) * m
        ctx = h.sum(1, keepdim=True) / m.sum(1, keepdim=True)
        return self.head(torch.tanh(self.mix(h + ctx)))  # (N, T, C)


def _token_batches(seed=0, pad_token=0, shapes=((3, 5), (2, 4)), pad_in_text=False):
    """Dict batches with attention_mask, padding at the end of sequences, targets -100 there.
    ``pad_in_text``: the padding token also occurs at unmasked positions (as when a tokenizer's
    pad token doubles as a text token), so that the forward pass uses its embedding row."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n, T in shapes:
        ids = torch.randint(1, 7, (n, T), generator=g)
        lengths = torch.randint(2, T + 1, (n,), generator=g)
        lengths[0] = T - 1  # at least one padded position
        mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
        ids = torch.where(mask.bool(), ids, torch.full_like(ids, pad_token))
        if pad_in_text:
            ids[0, 0] = pad_token
        targets = torch.randint(0, 3, (n, T), generator=g)
        targets = torch.where(mask.bool(), targets, torch.full_like(targets, -100))
        out.append(({"input_ids": ids, "attention_mask": mask}, targets))
    return out


def _token_forward(m, batch):
    return m(**batch).transpose(1, 2)  # (N, C, T), the layout CrossEntropyLoss expects


def _token_reference(model, batches, loss_fn):
    """Dense Hessian and GGN of Σ_b n_b L_b / Σ_b n_b by torch.func."""
    names, shapes, theta = _flat(model)
    N = sum(int(y.shape[0]) for _, y in batches)

    def z(t, x):
        return _token_forward(lambda **kw: functional_call(model, _state_of(model, names, shapes, t), (), kw), x)

    def L(t):
        return sum(y.shape[0] * loss_fn(z(t, x), y) for x, y in batches) / N

    H = torch.func.hessian(L)(theta)
    G = torch.zeros_like(H)
    for x, y in batches:
        zb = z(theta, x)
        J = torch.func.jacrev(lambda t: z(t, x))(theta).reshape(-1, theta.numel())
        HL = torch.func.hessian(lambda zz: loss_fn(zz, y))(zb).reshape(J.shape[0], -1)
        G += y.shape[0] / N * (J.T @ HL @ J)
    return H, G


def test_token_level_loss_with_ignore_index_hessian_and_ggn():
    torch.manual_seed(4)
    model = _TokenModel().double()
    batches = _token_batches()
    loss_fn = nn.CrossEntropyLoss(ignore_index=-100)
    H_ref, G_ref = _token_reference(model, batches, loss_fn)
    H = hesse.HessianOperator(model, loss_fn, batches, forward=_token_forward).to_dense()
    G = hesse.GGNOperator(model, loss_fn, batches, forward=_token_forward).to_dense()
    scale = float(H_ref.abs().max())
    assert torch.allclose(H, H_ref, atol=1e-10 * scale)
    assert torch.allclose(G, G_ref, atol=1e-10 * scale)
    assert not torch.allclose(H, G, atol=1e-3 * scale)  # the two differ: the test tells them apart


# ----------------------------------------------------------------------------- padding_idx rows


def _pad_setup():
    torch.manual_seed(5)
    model = _TokenModel(padding_idx=0).double()
    return model, _token_batches(seed=1, pad_in_text=True), nn.CrossEntropyLoss(ignore_index=-100)


def _pad_rows(model):
    """Flat indices of the padding row of the embedding (the first parameter)."""
    d = model.emb.weight.shape[1]
    return torch.arange(0, d)  # padding_idx = 0: the first row


@pytest.mark.parametrize("cls", [hesse.HessianOperator, hesse.GGNOperator, hesse.FisherOperator])
def test_padding_rows_are_frozen_and_the_operator_symmetric(cls):
    """V^T A W = W^T A V to rounding (before the padding row was masked the double-backward
    Hessian differed from its transpose by ~1e-4 relative there), and the padding row's rows and
    columns are zero."""
    model, batches, loss_fn = _pad_setup()
    assert any(bool(((x["input_ids"] == 0) & (x["attention_mask"] == 1)).any()) for x, _ in batches)
    op = cls(model, loss_fn, batches, forward=_token_forward)
    g = torch.Generator().manual_seed(0)
    V = torch.randn(op.shape[0], 3, generator=g, dtype=torch.float64)
    W = torch.randn(op.shape[0], 3, generator=g, dtype=torch.float64)
    AV, AW = op.matmat(V), op.matmat(W)
    scale = float(AV.abs().max())
    assert torch.allclose(W.T @ AV, (V.T @ AW).T, atol=1e-11 * scale * op.shape[0] ** 0.5)
    rows = _pad_rows(model)
    assert float(AV[rows].abs().max()) == 0.0
    E = torch.zeros(op.shape[0], len(rows), dtype=torch.float64)
    E[rows, torch.arange(len(rows))] = 1.0
    assert float(op.matmat(E).abs().max()) == 0.0


def test_padding_rows_hessian_matches_central_differences():
    """H v against (g(θ+εv) - g(θ-εv)) / 2ε of the autograd gradient, v zero on the padding row:
    error O(ε²) + O(1e-16/ε) ≈ 1e-9 relative at ε = 1e-5."""
    model, batches, loss_fn = _pad_setup()
    op = hesse.HessianOperator(model, loss_fn, batches, forward=_token_forward)
    names, shapes, theta = _flat(model)
    N = sum(int(y.shape[0]) for _, y in batches)

    def grad_at(t):
        t = t.clone().requires_grad_(True)
        state = _state_of(model, names, shapes, t)
        L = sum(y.shape[0] * loss_fn(_token_forward(
            lambda **kw: functional_call(model, state, (), kw), x), y) for x, y in batches) / N
        return torch.autograd.grad(L, t)[0]

    v = torch.randn(theta.numel(), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    v[_pad_rows(model)] = 0.0
    eps = 1e-5
    fd = (grad_at(theta + eps * v) - grad_at(theta - eps * v)) / (2 * eps)
    assert float(fd[_pad_rows(model)].abs().max()) == 0.0  # torch's gradient is frozen there too
    assert _rel(op.matvec(v), fd) < 1e-7


# ----------------------------------------------------------------------------- one signature

_SHARED = ["model", "loss_fn", "data", "params", "batch_loss", "batch_size", "forward", "dtype",
           "bn_mode", "eval_mode", "check_deterministic", "progress", "keep_graph", "graph_memory",
           "distributed"]


_OWN = {hesse.HessianOperator: ["matmat_strategy"], hesse.GGNOperator: [],
        hesse.FisherOperator: ["kind", "mc_samples", "seed"]}


@pytest.mark.parametrize("cls", [hesse.HessianOperator, hesse.GGNOperator, hesse.FisherOperator])
def test_model_operators_share_one_keyword_set(cls):
    """The shared keywords are declared once (ModelOperatorOptions, typed for checkers and
    editors); each operator's signature adds only its own; a misspelt keyword is a TypeError
    naming it, as Python's own."""
    import inspect
    import typing

    from hesse.operators._model_operator import ModelOperatorOptions

    names = [n for n in inspect.signature(cls.__init__).parameters if n != "self"]
    assert names == ["model", "loss_fn", "data", "params", *_OWN[cls], "options"]
    assert list(typing.get_type_hints(ModelOperatorOptions)) == _SHARED[4:]
    model = nn.Linear(3, 2).double()
    data = (torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(TypeError, match="'eval_mod'"):
        cls(model, nn.CrossEntropyLoss(), data, eval_mod=False)
    if cls is hesse.FisherOperator:  # its products keep no graphs
        with pytest.raises(TypeError, match="'keep_graph'"):
            cls(model, nn.CrossEntropyLoss(), data, keep_graph=True)
    else:
        assert cls(model, nn.CrossEntropyLoss(), data, keep_graph=False).graph_bytes == 0


def test_progress_writes_a_line_per_pass(capsys):
    model, (X, y) = _HFLike().double(), _hf_data()
    hesse.GGNOperator(model, nn.CrossEntropyLoss(), [(X, y), (X, y)], forward=lambda m, x: m(x).logits,
                      progress=True)
    assert "GGNOperator: loss and gradient" in capsys.readouterr().err
