"""GPU benchmarks for transformer-sized models (prints JSON and a table; writes
``benchmarks/results/gpu.json`` on CUDA).

1. HVP over gradient: a GPT-2-small-sized model (124M parameters, Hugging Face ``GPT2Config()``
   with random weights; ``--quick``: a tiny one), one batch of token sequences; wall time of
   ``hesse.HessianOperator`` products (graph kept, and rebuilt per product) over one
   forward + backward, with peak memory (``torch.cuda.max_memory_allocated``).
2. top-5 eigenpairs of a model with at least 1e8 parameters (the same GPT-2 small, 124M):
   ``hesse.eigsh(op, k=5)``, wall time, products, residuals, peak memory.
3. K-FAC step time (``hesse.optim.KFAC``) against ``torch.optim.Adam`` on a BERT-style model
   (``nn.Linear`` layers, which K-FAC preconditions; embeddings and LayerNorms fall back to SGD
   with momentum), with peak memory.

Without CUDA the script refuses politely, except ``--device cpu --quick`` (a smoke run of the
code paths on tiny models). Usage:
    python benchmarks/bench_gpu.py [--device cuda] [--quick] [--out PATH]
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

import torch
from torch import nn

import hesse

warnings.filterwarnings("ignore")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def timed(fn, device, repeat: int = 3) -> float:
    fn()
    sync(device)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def gpt2(quick: bool, device):
    import transformers

    if quick:
        cfg = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16,
                                      bos_token_id=1, eos_token_id=1)
    else:
        cfg = transformers.GPT2Config()  # GPT-2 small: 12 layers, width 768, 124M parameters
    cfg.resid_pdrop = cfg.embd_pdrop = cfg.attn_pdrop = 0.0
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).to(device).eval(), cfg


def tokens(cfg_vocab: int, batch: int, seq: int, device):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg_vocab, (batch, seq), generator=g).to(device)
    return ids


def lm_loss(vocab):
    def loss(logits, ids):
        return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, vocab), ids[:, 1:].reshape(-1))
    return loss


def logits_of(model, ids):
    return model(ids).logits


def bench_hvp_and_top5(quick: bool, device) -> list[dict]:
    model, cfg = gpt2(quick, device)
    n = sum(p.numel() for p in model.parameters())
    ids = tokens(cfg.vocab_size, 2 if quick else 4, 8 if quick else 256, device)
    loss_fn = lm_loss(cfg.vocab_size)

    def gradient():
        model.zero_grad(set_to_none=True)
        loss_fn(logits_of(model, ids), ids).backward()

    reset_peak(device)
    t_grad = timed(gradient, device)
    peak_grad = peak_bytes(device)
    model.zero_grad(set_to_none=True)
    rows = []
    for keep in (True, False):
        reset_peak(device)
        op = hesse.HessianOperator(model, loss_fn, [(ids, ids)], forward=logits_of, keep_graph=keep)
        v = torch.randn(op.shape[0], dtype=op.dtype, device=device)
        t = timed(lambda: op @ v, device)
        rows.append(dict(task="HVP over gradient", model=f"GPT-2 ({n / 1e6:.1f}M)", n=n,
                         method="graph kept" if keep else "graph rebuilt", seconds=t, ratio=t / t_grad,
                         gradient_s=t_grad, peak_bytes=peak_bytes(device), gradient_peak_bytes=peak_grad))
        del op
    reset_peak(device)
    op = hesse.HessianOperator(model, loss_fn, [(ids, ids)], forward=logits_of)
    t0 = time.perf_counter()
    res = hesse.eigsh(op, k=5, tol=1e-3, max_matvecs=40 if quick else 200)
    sync(device)
    rows.append(dict(task="top-5 eigenpairs", model=f"GPT-2 ({n / 1e6:.1f}M)", n=n, method="hesse.eigsh",
                     seconds=time.perf_counter() - t0, products=op.num_matvecs,
                     values=[float(x) for x in res.values], converged=bool(res.all_converged),
                     peak_bytes=peak_bytes(device)))
    return rows


def _optimizer_row(name: str, cfg, ids, quick: bool, device) -> dict:
    import transformers

    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(cfg).to(device).train()
    n = sum(p.numel() for p in model.parameters())
    opt = (torch.optim.Adam(model.parameters(), lr=1e-4) if name == "Adam"
           else hesse.optim.KFAC(model, lr=1e-3, inverse_every=10))

    def closure():
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=ids).logits
        loss = nn.functional.cross_entropy(logits.reshape(-1, cfg.vocab_size), ids.reshape(-1))
        loss.backward()
        return loss

    def step():
        if name == "KFAC":
            opt.step(closure)
        else:
            closure()
            opt.step()

    reset_peak(device)
    step()  # first step: K-FAC factors and inverses, Adam state
    sync(device)
    steps = 3 if quick else 10  # spans one K-FAC inverse refresh (inverse_every=10)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return dict(task="optimizer step", model=f"BERT ({n / 1e6:.1f}M)", n=n, method=name,
                seconds=(time.perf_counter() - t0) / steps, peak_bytes=peak_bytes(device))


def bench_kfac(quick: bool, device) -> list[dict]:
    import transformers

    if quick:
        cfg = transformers.BertConfig(num_hidden_layers=1, hidden_size=16, num_attention_heads=2,
                                      intermediate_size=32, vocab_size=50, max_position_embeddings=16)
        batch, seq = 2, 8
    else:  # BERT-base sized body with an 8k vocabulary (K-FAC's output factor is vocab x vocab)
        cfg = transformers.BertConfig(vocab_size=8192)
        batch, seq = 16, 128
    cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0
    ids = tokens(cfg.vocab_size, batch, seq, device)
    rows = [_optimizer_row(name, cfg, ids, quick, device) for name in ("Adam", "KFAC")]
    adam = rows[0]["seconds"]
    for r in rows:
        r["ratio"] = r["seconds"] / adam
    return rows


def table(rows) -> str:
    head = f"{'task':<18} {'model':<16} {'method':<14} {'seconds':>9} {'ratio':>7} {'peak GiB':>9}  notes"
    lines = [head, "-" * len(head)]
    for r in rows:
        peak = "-" if r.get("peak_bytes") is None else f"{r['peak_bytes'] / 2**30:.2f}"
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else "-"
        notes = (f"products {r['products']}, converged {r['converged']}" if "products" in r else "")
        lines.append(f"{r['task']:<18} {r['model']:<16} {r['method']:<14} {r['seconds']:>9.3f} {ratio:>7} "
                     f"{peak:>9}  {notes}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu with --quick")
    parser.add_argument("--quick", action="store_true", help="tiny models (a smoke run)")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/gpu.json on CUDA)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: CUDA is not available on this machine; these benchmarks are about GPU "
              "time and memory. For a smoke run of the code paths use --device cpu --quick.", file=sys.stderr)
        return None
    if device.type != "cuda" and not args.quick:
        print(f"bench_gpu: --device {args.device} runs only as a smoke run (--device cpu --quick); "
              "the full benchmark needs CUDA.", file=sys.stderr)
        return None
    if importlib.util.find_spec("transformers") is None:
        print("bench_gpu: needs the `transformers` package.", file=sys.stderr)
        return None
    rows = bench_hvp_and_top5(args.quick, device) + bench_kfac(args.quick, device)
    result = {"benchmark": "gpu", "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "quick": args.quick, "torch": torch.__version__, "rows": rows}
    print(json.dumps(result, indent=1))
    print(table(rows))
    out = args.out or (os.path.join(os.path.dirname(__file__), "results", "gpu.json")
                       if device.type == "cuda" and not args.quick else None)
    if out:
        with open(out, "w") as fh:
            json.dump(result, fh, indent=1)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
