"""Hugging Face GPT-2 and BERT, a model that computes its own loss, and a bfloat16 model through the
sharpness monitor and the report (``analyze_training``), against ``eigsh`` on the operator.

Tolerances: the monitor and the report compute the same float64 (or float32) products as the
operator built here, with Lanczos run to ``tol <= 1e-6``; the top eigenvalues agree to 1e-5
relative (the looser of the two Lanczos tolerances, with margin).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hesse
from hesse.diagnostics import SharpnessMonitor
from hesse.diagnostics.report import analyze_training

transformers = pytest.importorskip("transformers")

VOCAB, T, IGNORE = 10, 6, -100


def _gpt2():
    cfg = transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=VOCAB, n_positions=T,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).double()


def _bert():
    cfg = transformers.BertConfig(num_hidden_layers=1, hidden_size=8, num_attention_heads=2,
                                  intermediate_size=16, vocab_size=VOCAB, max_position_embeddings=T,
                                  pad_token_id=0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    return transformers.BertForMaskedLM(cfg).double()


def _batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, VOCAB, (4, T), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    return {"input_ids": ids, "attention_mask": mask}, ids.masked_fill(mask == 0, IGNORE)


def _logits(model, inputs):
    return model(**inputs).logits


def _token_loss(logits, labels):
    return nn.functional.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=IGNORE)


def _own_loss(model, batch):
    inputs, labels = batch
    return model(**inputs, labels=labels).loss


CASES = {
    "gpt2-forward": (_gpt2, dict(loss_fn=_token_loss, forward=_logits)),
    "bert-forward": (_bert, dict(loss_fn=_token_loss, forward=_logits)),
    "gpt2-own-loss": (_gpt2, dict(batch_loss=_own_loss)),
}


def _top(model, data, **loss):
    return float(hesse.eigsh(hesse.HessianOperator(model, data=data, **loss), k=1, tol=1e-8, seed=0).values[0])


@pytest.mark.parametrize("case", list(CASES))
def test_monitor_and_report_on_hugging_face_models(case):
    make, loss = CASES[case]
    data = [_batch()]
    model = make()
    record = SharpnessMonitor(model, data=data, k=1, tol=1e-8, **loss).measure(lr=0.1)
    assert record.lambda_max == pytest.approx(_top(model, data, **loss), rel=1e-5)
    out = analyze_training(model, data=data, train_steps=2, lr=0.05, every=1, k=2, density_steps=8,
                           landscape_steps=5, **loss)
    assert len(out["records"]) >= 2 and all(r["lambda_max"] > 0 for r in out["records"])
    # the report analyses the trained model: its top eigenvalue is the operator's at those weights
    assert out["final"]["top_eigenvalues"][0] == pytest.approx(_top(model, data, **loss), rel=1e-5)


def test_bfloat16_model_through_operator_monitor_and_report():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(torch.bfloat16)
    X, y = torch.randn(32, 6).to(torch.bfloat16), torch.randint(0, 3, (32,))
    loss_fn = nn.CrossEntropyLoss()
    # ground truth: the same bf16-rounded weights and inputs, in float64
    ref_model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    ref_model.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    H64 = hesse.HessianOperator(ref_model, loss_fn, (X.double(), y)).to_dense()
    top64 = float(torch.linalg.eigvalsh(H64)[-1])
    # computed in float32: float32 rounding of a float64 computation, far below bf16's eps 2^-8
    op = hesse.HessianOperator(model, loss_fn, (X, y), dtype=torch.float32)
    assert op.dtype == torch.float32 and model[0].weight.dtype == torch.bfloat16
    assert float(hesse.eigsh(op, k=1, tol=1e-7).values[0]) == pytest.approx(top64, rel=1e-4)
    record = SharpnessMonitor(model, loss_fn, (X, y), k=1, tol=1e-7, dtype=torch.float32).measure(lr=0.1)
    assert record.lambda_max == pytest.approx(top64, rel=1e-4)
    out = analyze_training(model, loss_fn, (X, y), k=2, density_steps=8, landscape_steps=5, dtype=torch.float32)
    assert out["final"]["top_eigenvalues"][0] == pytest.approx(top64, rel=1e-4)
    assert model[0].weight.dtype == torch.bfloat16  # the user's model is left in its precision
