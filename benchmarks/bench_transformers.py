"""Transformer benchmarks: Hugging Face GPT-2 and BERT style models (random weights from configs,
about 1M parameters), Hessian-vector product cost over gradient cost and the top eigenvalue.

For each model, on one batch of padded token sequences (attention mask, token-level cross entropy
with ``ignore_index``):

1. gradient: wall time of ``loss.backward()`` (forward + backward), the unit;
2. HVP: ``op @ v`` of ``hesse.HessianOperator`` with the first-backward graph kept (one extra
   backward per product) and rebuilt per product (``keep_graph=False``: forward + two backwards),
   as multiples of the gradient;
3. top eigenvalue: ``hesse.eigsh(op, k=1, tol=1e-4)``, wall time, products, and relative error
   against a reference run at ``tol=1e-6`` (float32; ``1e-10`` in float64);
4. the same quantities with PyHessian and curvlinops in the same process, on the same model, data and
   loss, when they are importable (optional peers, never required; otherwise their rows say
   "skipped: not importable"):
   - PyHessian: ``hessian(Logits(model), loss, data=(inputs, labels))``, one product of its
     ``hessian_vector_product`` on the kept first-backward graph, and ``eigenvalues(top_n=1,
     tol=1e-4)``, whose power iteration stops when the eigenvalue changes by less than ``tol``
     relatively and returns the eigenvalue of largest magnitude; its products are counted;
   - curvlinops: ``HessianLinearOperator(...).to_scipy()`` (a jvp of a jacrev per product, the
     graph rebuilt each time), one ``matvec``, and SciPy ARPACK ``eigsh(k=1, which="LA", tol=1e-4)``
     with its products counted.

One thread (``torch.set_num_threads(1)``), medians of 3 after a warm-up. The peers need no
torchvision here; a separate environment keeps them out of the project's::

    python -m venv benchvenv && benchvenv/bin/pip install torch numpy scipy transformers tqdm einops
    benchvenv/bin/pip install --no-deps pyhessian curvlinops-for-pytorch backpack-for-pytorch
    benchvenv/bin/pip install --no-deps unfoldNd einconv linear_operator jaxtyping wadler_lindig
    PYTHONPATH=src benchvenv/bin/python benchmarks/bench_transformers.py

Prints JSON and a table; writes ``benchmarks/results/transformers.json`` (``--quick``: tiny models,
a few seconds, writes nothing unless ``--out`` is given).

Usage: python benchmarks/bench_transformers.py [--quick] [--out PATH] [--dtype float32|float64]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
import warnings

import numpy
import torch
from scipy.sparse.linalg import LinearOperator
from torch import nn

import hesse

warnings.filterwarnings("ignore")
IGNORE = -100


def configs(quick: bool) -> dict:
    import transformers

    if quick:
        size = dict(layers=1, width=16, heads=2, vocab=50, seq=8, batch=2)
    else:  # ~1M parameters each
        size = dict(layers=4, width=128, heads=4, vocab=1000, seq=64, batch=8)
    gpt = transformers.GPT2Config(n_layer=size["layers"], n_embd=size["width"], n_head=size["heads"],
                                  vocab_size=size["vocab"], n_positions=size["seq"], bos_token_id=1,
                                  eos_token_id=1, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    bert = transformers.BertConfig(num_hidden_layers=size["layers"], hidden_size=size["width"],
                                   num_attention_heads=size["heads"], intermediate_size=4 * size["width"],
                                   vocab_size=size["vocab"], max_position_embeddings=size["seq"],
                                   pad_token_id=0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return {"gpt2": (transformers.GPT2LMHeadModel, gpt, size), "bert": (transformers.BertForMaskedLM, bert, size)}


def make_batch(kind: str, size: dict, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    B, T, V = size["batch"], size["seq"], size["vocab"]
    ids = torch.randint(1, V, (B, T), generator=g)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    ids = ids.masked_fill(mask == 0, 0)
    labels = ids.masked_fill(mask == 0, IGNORE)
    if kind == "bert":
        labels = labels.masked_fill(torch.rand(B, T, generator=g) > 0.15, IGNORE)
        labels[:, 0] = ids[:, 0]  # at least one predicted token per sequence
    return {"input_ids": ids, "attention_mask": mask}, labels


class TokenLoss(nn.Module):
    """Token-level cross entropy, mean over the predicted (not ignored) tokens; GPT-2 shifts by one.

    A module with ``reduction = "mean"`` because curvlinops reads that attribute to scale each
    batch by ``batch_size / num_data``; with the one batch used here the factor is 1, so all three
    libraries see exactly this loss.
    """

    reduction = "mean"

    def __init__(self, kind: str, vocab: int):
        super().__init__()
        self.kind, self.vocab = kind, vocab

    def forward(self, logits, labels):
        if self.kind == "gpt2":
            logits, labels = logits[:, :-1], labels[:, 1:]
        return nn.functional.cross_entropy(logits.reshape(-1, self.vocab), labels.reshape(-1),
                                           ignore_index=IGNORE)


def token_loss(kind: str, vocab: int) -> TokenLoss:
    return TokenLoss(kind, vocab)


def logits_of(model, inputs):
    return model(**inputs).logits


def median_time(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def hesse_rows(kind, model, loss_fn, data, repeat):
    inputs, labels = data[0]

    def gradient():
        model.zero_grad(set_to_none=True)
        loss_fn(logits_of(model, inputs), labels).backward()

    t_grad = median_time(gradient, repeat)
    model.zero_grad(set_to_none=True)
    op = hesse.HessianOperator(model, loss_fn, data, forward=logits_of)
    fresh = hesse.HessianOperator(model, loss_fn, data, forward=logits_of, keep_graph=False)
    v = torch.randn(op.shape[0], dtype=op.dtype, generator=torch.Generator().manual_seed(0))
    t_kept = median_time(lambda: op @ v, repeat)
    t_fresh = median_time(lambda: fresh @ v, repeat)
    # the reference: as tight as float32 products allow (residual 1e-6), capped so it ends
    ref = hesse.eigsh(op, k=1, tol=1e-6 if op.dtype == torch.float32 else 1e-10, max_matvecs=300,
                      return_vectors=False)
    truth = float(ref.values[0])
    op.reset_counter()
    t0 = time.perf_counter()
    top = hesse.eigsh(op, k=1, tol=1e-4, return_vectors=False)
    t_eig = time.perf_counter() - t0
    common = dict(model=kind, n=op.shape[0], dtype=str(op.dtype).replace("torch.", ""), gradient_s=t_grad)
    return [dict(common, method="hesse", hvp_over_gradient=t_kept / t_grad,
                 hvp_fresh_over_gradient=t_fresh / t_grad, top_eig=float(top.values[0]),
                 top_eig_rel_err=abs(float(top.values[0]) - truth) / abs(truth), top_eig_s=t_eig,
                 top_eig_products=op.num_matvecs, status="ok")], truth, t_grad


def peer_rows(kind, model, loss_fn, data, truth, t_grad, repeat):
    rows = []
    inputs, labels = data[0]
    common = dict(model=kind, n=sum(p.numel() for p in model.parameters()), gradient_s=t_grad)

    class Logits(nn.Module):  # the peers call model(inputs) and expect the logits tensor
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            return logits_of(self.inner, x)

    wrapped = Logits().eval()
    params = [p for p in wrapped.parameters() if p.requires_grad]

    def rel_err(val):
        return abs(val - truth) / abs(truth)

    if importlib.util.find_spec("curvlinops") is None:
        rows.append(dict(common, method="curvlinops + ARPACK", status="skipped: not importable"))
    else:
        from curvlinops import HessianLinearOperator
        from scipy.sparse.linalg import eigsh as arpack

        # curvlinops >= 2 is a PyTorch operator (jvp of jacrev per product, the graph rebuilt
        # each time); ``to_scipy`` gives the SciPy LinearOperator ARPACK needs. The determinism
        # probe (extra products) is off: the model is in eval mode with dropout 0.
        H = HessianLinearOperator(wrapped, loss_fn, params, [(inputs, labels)], check_deterministic=False,
                                  batch_size_fn=lambda X: X["input_ids"].shape[0])
        Hs = H.to_scipy(dtype=numpy.float32 if params[0].dtype == torch.float32 else numpy.float64)
        count = [0]
        mv = Hs.matvec

        def counted(x):
            count[0] += 1
            return mv(x)

        counted_op = LinearOperator(Hs.shape, matvec=counted, dtype=Hs.dtype)
        v = torch.randn(Hs.shape[0], generator=torch.Generator().manual_seed(0)).numpy().astype(Hs.dtype)
        t_hvp = median_time(lambda: Hs.matvec(v), repeat)
        v0 = numpy.random.default_rng(0).standard_normal(Hs.shape[0]).astype(Hs.dtype)
        t0 = time.perf_counter()
        val = float(arpack(counted_op, k=1, which="LA", tol=1e-4, v0=v0, return_eigenvectors=False)[0])
        t_eig = time.perf_counter() - t0
        rows.append(dict(common, method="curvlinops + ARPACK", hvp_over_gradient=t_hvp / t_grad, top_eig=val,
                         top_eig_rel_err=rel_err(val), top_eig_s=t_eig, top_eig_products=count[0], status="ok"))
    if importlib.util.find_spec("pyhessian") is None:
        rows.append(dict(common, method="PyHessian", status="skipped: not importable"))
    else:
        import pyhessian  # noqa: F401  (the package re-exports the class under the module's name)

        ph_module = sys.modules["pyhessian.hessian"]

        model.zero_grad(set_to_none=True)  # PyHessian reads p.grad after its own backward
        ph = ph_module.hessian(wrapped, loss_fn, data=(inputs, labels), cuda=False)
        hvp = ph_module.hessian_vector_product
        v = [torch.randn(p.shape, dtype=p.dtype) for p in ph.params]
        t_hvp = median_time(lambda: hvp(ph.gradsH, ph.params, v), repeat)
        count = [0]

        def counted(*a):
            count[0] += 1
            return hvp(*a)

        ph_module.hessian_vector_product = counted  # count the power-iteration products
        try:
            torch.manual_seed(0)  # its start vector comes from the global generator
            t0 = time.perf_counter()
            # tol is its relative change of the eigenvalue between two iterations (not a residual)
            vals, _ = ph.eigenvalues(top_n=1, tol=1e-4, maxIter=100)
            t_eig = time.perf_counter() - t0
        finally:
            ph_module.hessian_vector_product = hvp
        val = float(vals[0])
        rows.append(dict(common, method="PyHessian", hvp_over_gradient=t_hvp / t_grad, top_eig=val,
                         top_eig_rel_err=rel_err(val), top_eig_s=t_eig, top_eig_products=count[0], status="ok"))
        del ph
        model.zero_grad(set_to_none=True)  # drop the create_graph gradients
    return rows


def table(rows) -> str:
    head = f"{'model':<6} {'method':<20} {'n':>9} {'HVP/grad':>9} {'fresh/grad':>10} {'top eig':>11} {'rel err':>9} {'eig s':>7} {'products':>8}  status"
    lines = [head, "-" * len(head)]

    def f(r, key, fmt):
        return format(r[key], fmt) if key in r else "-"

    for r in rows:
        lines.append(f"{r['model']:<6} {r['method']:<20} {r['n']:>9d} {f(r, 'hvp_over_gradient', '.2f'):>9} "
                     f"{f(r, 'hvp_fresh_over_gradient', '.2f'):>10} {f(r, 'top_eig', '.5g'):>11} "
                     f"{f(r, 'top_eig_rel_err', '.1e'):>9} {f(r, 'top_eig_s', '.2f'):>7} "
                     f"{f(r, 'top_eig_products', 'd'):>8}  {r['status']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models, a few seconds")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/transformers.json; "
                                                    "--quick writes nothing unless given)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args(argv)
    if importlib.util.find_spec("transformers") is None:
        parser.exit(1, "bench_transformers needs the `transformers` package (pip install transformers).\n")
    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(1)  # one thread for every method, as in the other benchmarks
    repeat = 3
    rows = []
    for kind, (cls, cfg, size) in configs(args.quick).items():
        torch.manual_seed(0)
        cfg._attn_implementation = "eager"
        model = cls(cfg).to(dtype).eval()
        loss_fn = token_loss(kind, size["vocab"])
        data = [make_batch(kind, size)]
        hrows, truth, t_grad = hesse_rows(kind, model, loss_fn, data, repeat)
        rows += hrows + peer_rows(kind, model, loss_fn, data, truth, t_grad, repeat)
    result = {"benchmark": "transformers", "quick": args.quick, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "rows": rows}
    print(json.dumps(result, indent=1))
    print(table(rows))
    out = args.out or (None if args.quick else os.path.join(os.path.dirname(__file__), "results", "transformers.json"))
    if out:
        with open(out, "w") as fh:
            json.dump(result, fh, indent=1)
    return result


if __name__ == "__main__":
    main()
