"""Hugging Face GPT-2 and BERT models (random weights from configs) through hesse's operators.

Ground truth, in float64:
- the dense Hessian of the flat loss from ``torch.autograd.functional.hessian`` (micro configs
  of a few hundred parameters, one double backward per unit vector, no ``vmap``), with the
  embedding padding row zeroed in rows and columns (the operator holds it fixed: torch zeroes its
  gradient, see ``HessianOperator``'s docs). Not ``torch.func.hessian`` nor
  ``jacrev(jacrev(f))``: in torch 2.13 both ``vmap`` over LayerNorm's backward and give LayerNorm
  weight rows that disagree with central differences (while autograd's agree), so a vmapped
  dense Hessian is no ground truth for transformers;
- central differences of the autograd gradient, ``(g(θ + h v) - g(θ - h v)) / 2h``, whose error is
  ``O(h² |∇³L|)`` plus rounding ``O(ε |g| / h)``. LayerNorm over a width-4 residual stream of
  init-scale (σ ≈ 0.02) activations makes ``|∇³L| / |∇²L| ~ 1/σ``-squared large: the truncation is
  ~``(h/σ)²`` relative (2.5e-5 measured at h = 1e-4), so ``h = 1e-6`` gives ~1e-8 and rounding
  ~1e-10; ``1e-6`` relative leaves a margin of 100;
- ``torch.linalg.eigvalsh`` of the dense matrix for the spectra.

Sizes are kept small (one layer, width 8) so the folder runs in well under a minute on one core.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.func import functional_call

import hesse
from hesse.operators.evaluation import AttentionFallbackWarning

transformers = pytest.importorskip("transformers")

VOCAB, T, PAD, IGNORE = 10, 6, 0, -100


def gpt2(attn="eager", n_layer=1, n_embd=4):
    cfg = transformers.GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=2, vocab_size=VOCAB,
                                  n_positions=T, bos_token_id=1, eos_token_id=1,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).double()


def bert(attn="eager", n_layer=1, hidden=4):
    cfg = transformers.BertConfig(num_hidden_layers=n_layer, hidden_size=hidden, num_attention_heads=2,
                                  intermediate_size=2 * hidden, vocab_size=VOCAB,
                                  max_position_embeddings=T, pad_token_id=PAD,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    return transformers.BertForMaskedLM(cfg).double()


def batch(kind: str, seed: int = 1):
    """Dict inputs with right padding (pad token, attention mask 0) and token labels where padded
    (and, for BERT, unmasked) positions carry ``ignore_index``."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (3, T), generator=g)
    lengths = torch.tensor([T, T - 2, T - 3])
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    ids = ids.masked_fill(mask == 0, PAD)
    labels = ids.masked_fill(mask == 0, IGNORE)
    if kind == "bert":  # masked-LM: predict two positions per sequence
        chosen = torch.zeros_like(mask, dtype=torch.bool)
        chosen[:, 1] = chosen[:, 2] = True
        labels = labels.masked_fill(~chosen, IGNORE)
    return {"input_ids": ids, "attention_mask": mask}, labels


def token_loss(kind: str):
    def loss(logits, labels):
        if kind == "gpt2":  # next-token prediction: position t predicts label t+1
            logits, labels = logits[:, :-1], labels[:, 1:]
        return torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1),
                                                 ignore_index=IGNORE)
    return loss


def logits_of(model, inputs):
    return model(**inputs).logits


MODELS = {"gpt2": gpt2, "bert": bert}


def make_op(kind, attn="eager", **kw):
    model = MODELS[kind](attn)
    inputs, labels = batch(kind)
    op = hesse.HessianOperator(model, token_loss(kind), [(inputs, labels)], forward=logits_of, **kw)
    return model, inputs, labels, op


def flat_loss(model, kind, inputs, labels):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()])

    def f(t):
        state = {n: c.reshape(s) for n, c, s in zip(names, torch.split(t, [s.numel() for s in shapes]), shapes)}
        return token_loss(kind)(functional_call(model, state, (), inputs).logits, labels)

    return f, theta


def padding_mask(op):
    mask = getattr(op._problem, "frozen_mask", None)
    return torch.ones(op.shape[0], dtype=torch.float64) if mask is None else mask.to(torch.float64)


_DENSE: dict = {}


def dense_reference(kind):
    """``P ∇²L P`` from ``torch.autograd.functional.hessian`` (P zeroes the frozen padding row), cached."""
    if kind not in _DENSE:
        model, inputs, labels, op = make_op(kind)
        assert op.shape[0] < 2000
        f, theta = flat_loss(model, kind, inputs, labels)
        H = torch.autograd.functional.hessian(f, theta)
        P = padding_mask(op)
        _DENSE[kind] = (op, P[:, None] * H * P[None, :])
    return _DENSE[kind]


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_operator_matches_dense_autograd_hessian(kind):
    op, H = dense_reference(kind)
    A = op.to_dense()
    # float64 evaluations of the same second derivatives (hesse's batched double backward
    # against one double backward per unit vector): agreement to rounding, 1e-10 relative
    assert float((A - H).norm() / H.norm()) < 1e-10
    assert float((A - A.T).norm() / A.norm()) < 1e-12


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_products_match_central_differences(kind):
    model, inputs, labels, op = make_op(kind)
    f, theta = flat_loss(model, kind, inputs, labels)
    P = padding_mask(op)
    if kind == "bert":  # the batch holds the pad token, and the pad row is frozen
        assert bool((inputs["input_ids"] == PAD).any()) and float(P.sum()) < op.shape[0]
    g = torch.func.grad(f)
    h = 1e-6
    for seed in range(2):
        v = torch.randn(op.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * P
        fd = (g(theta + h * v) - g(theta - h * v)) / (2 * h) * P
        hv = op @ v
        assert float((hv - fd).norm() / fd.norm()) < 1e-6  # see module docs for the 1e-6


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_spectrum_tools_agree_with_eigvalsh(kind):
    op, H = dense_reference(kind)
    lam = torch.linalg.eigvalsh(H)
    scale = float(lam.abs().max())
    top = hesse.eigsh(op, k=2, which="both", dense_threshold=0, tol=1e-9)
    # converged Lanczos Ritz values of the extreme eigenvalues: residual tol 1e-9 -> 1e-7 relative
    assert abs(float(top.values.max()) - float(lam[-1])) < 1e-7 * scale
    assert abs(float(top.values.min()) - float(lam[0])) < 1e-7 * scale
    tr = hesse.trace(op, num_matvecs=op.shape[0])  # n products: the exact trace
    assert abs(tr.value - float(lam.sum())) < 1e-9 * float(lam.abs().sum())
    dens = hesse.spectral_density(op, num_probes=2, num_steps=30)
    # SLQ nodes lie inside the spectrum's hull (Ritz values), its weights sum to one per probe
    assert float(dens.nodes.min()) >= float(lam[0]) - 1e-8 * scale
    assert float(dens.nodes.max()) <= float(lam[-1]) + 1e-8 * scale
    assert abs(dens.integral() - 1.0) < 0.05
    # per-block extremes against eigvalsh of the dense diagonal blocks
    groups = hesse.layer_groups(op._problem.model, by="block_type", pool_layers=True)
    table = hesse.per_layer(lambda names: hesse.HessianOperator(
        op._problem.model, token_loss(kind), [batch(kind)], names, forward=logits_of), groups)
    offsets = dict(zip(op.param_names, torch.cumsum(torch.tensor([0, *op._problem.numels]), 0).tolist()))
    for row in table.rows:
        idx = torch.cat([torch.arange(offsets[n], offsets[n] + dict(op._problem.model.named_parameters())[n].numel())
                         for n in row.params])
        block = torch.linalg.eigvalsh(H[idx][:, idx])
        tol = 1e-9 * max(1.0, float(block.abs().max()))
        assert abs(row.lambda_max - float(block[-1])) < tol and abs(row.lambda_min - float(block[0])) < tol, row.layer


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_sdpa_fallback_gives_the_eager_numbers(kind):
    """SDPA's fused CPU kernel (float32; float64 runs the math kernel anyway) has no double
    backward; the operator falls back to the math kernel, warning once, and must then give the
    eager-attention products."""
    inputs, labels = batch(kind)
    ops, caught = {}, []
    for attn in ("eager", "sdpa"):
        model = MODELS[kind](attn).float()
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            ops[attn] = hesse.HessianOperator(model, token_loss(kind), [(inputs, labels)], forward=logits_of)
            V = torch.randn(ops[attn].shape[0], 3, generator=torch.Generator().manual_seed(0))
            ops[attn] @ V
        caught.append(sum(issubclass(w.category, AttentionFallbackWarning) for w in got))
    assert model.config._attn_implementation == "sdpa"
    assert caught == [0, 1]  # eager never falls back; sdpa once
    # same function, float32 products with different summation orders inside attention:
    # float32 rounding (6e-8) amplified by the Hessian's conditioning, 1e-4 relative
    assert float((ops["sdpa"] @ V - ops["eager"] @ V).norm() / (ops["eager"] @ V).norm()) < 1e-4


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_model_computing_its_own_loss_matches_explicit_loss(kind):
    model = MODELS[kind]()
    inputs, labels = batch(kind)
    explicit = hesse.HessianOperator(model, token_loss(kind), [(inputs, labels)], forward=logits_of)
    own = hesse.HessianOperator(model, data=[{**inputs, "labels": labels}], batch_loss=lambda m, b: m(**b).loss)
    # Hugging Face's causal-LM loss casts the logits to float32 (``logits.float()``): the two
    # agree to float32 rounding (eps 6e-8, times the conditioning of a softmax: 1e-6)
    assert abs(own.loss - explicit.loss) < 1e-6
    assert float((own.gradient - explicit.gradient).norm()) < 1e-6 * float(explicit.gradient.norm())
    V = torch.randn(own.shape[0], 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert float((own @ V - explicit @ V).norm() / (explicit @ V).norm()) < 1e-6


def test_float32_model_in_float64_operator_matches_float64_model():
    """``dtype=torch.float64`` on a float32 model evaluates on a float64 copy of θ: the same
    matrix as a float64 model with the same (float32-representable) weights, to rounding."""
    model32 = gpt2().float()
    inputs, labels = batch("gpt2")
    op = hesse.HessianOperator(model32, token_loss("gpt2"), [(inputs, labels)], forward=logits_of,
                               dtype=torch.float64)
    ref = hesse.HessianOperator(gpt2().float().double(), token_loss("gpt2"), [(inputs, labels)],
                                forward=logits_of)
    assert op.dtype == torch.float64
    v = torch.randn(op.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    # same float32-representable weights, both evaluated in float64: rounding, 1e-10 relative
    assert float((op @ v - ref @ v).norm() / (ref @ v).norm()) < 1e-10
    assert all(p.dtype == torch.float32 for p in model32.parameters())
