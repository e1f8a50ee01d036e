"""Block-wise Hessian spectra of a small GPT, after Zhang et al. (2024), "Why Transformers Need Adam:
A Hessian Perspective" (NeurIPS 2024, arXiv:2402.16788).

Zhang et al. observe that the Hessian spectra of a transformer's parameter blocks (embeddings,
query/key/value, attention output, MLP, LayerNorm) differ a lot from block to block ("block
heterogeneity"), while those of a CNN's layers look alike, and argue that one learning rate for all
blocks (SGD) then fits none, which Adam's per-coordinate scaling repairs.

This script trains a 2-layer GPT-2 (Hugging Face ``transformers``, built from a config with random
weights, nothing downloaded) for a few dozen Adam steps on text from a synthetic grammar, groups
its parameters with ``hesse.layer_groups(model, by="block_type", pool_layers=True)``, estimates each
block's spectral density ``H_BB`` with stochastic Lanczos quadrature (``hesse.spectral_density``
on a ``HessianOperator`` restricted to the block's parameters), and measures how different the
blocks are: the Jensen-Shannon distance between the densities on a common ``asinh`` axis (which
resolves spectra of very different scales, ``asinh(λ / s)`` with ``s = 1e-3 max|λ|``), and the
Wasserstein-1 distance between the quadrature measures. The same distance for a small MLP trained
on the same task is printed for comparison. One figure: the densities, and the distance matrix.

Run: ``python examples/transformer_blocks.py --out transformer_blocks.png`` (``--quick``: fewer
steps and probes, about half a minute on one core).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance
from torch import nn

import hesse

VOCAB, SEQ = 24, 16


def grammar_text(num_sequences: int, seed: int = 0) -> torch.Tensor:
    """Sequences from a small synthetic grammar: a sentence is ``subject verb object`` drawn from
    fixed word lists (each word 1-3 tokens), sentences separated by token 0; next-token
    prediction then has both deterministic (inside a word) and uncertain (word choice) steps."""
    g = torch.Generator().manual_seed(seed)
    words = [[torch.randint(1, VOCAB, (int(torch.randint(1, 4, (), generator=g)),), generator=g).tolist()
              for _ in range(4)] for _ in range(3)]
    rows = []
    for _ in range(num_sequences):
        tokens: list[int] = []
        while len(tokens) < SEQ:
            for role in range(3):
                tokens += words[role][int(torch.randint(0, 4, (), generator=g))]
            tokens.append(0)
        rows.append(tokens[:SEQ])
    return torch.tensor(rows)


def next_token_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))


def logits_of(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    return out.logits if hasattr(out, "logits") else out


def small_gpt(width: int) -> nn.Module:
    import transformers

    cfg = transformers.GPT2Config(n_layer=2, n_embd=width, n_head=2, vocab_size=VOCAB, n_positions=SEQ,
                                  bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0,
                                  attn_pdrop=0.0)
    cfg._attn_implementation = "eager"
    return transformers.GPT2LMHeadModel(cfg)


class TokenMLP(nn.Module):
    """The homogeneous baseline: embedding of the last 4 tokens, two hidden layers."""

    def __init__(self, width: int, context: int = 4):
        super().__init__()
        self.context = context
        self.embed = nn.Embedding(VOCAB, width)
        self.fc1, self.fc2 = nn.Linear(context * width, 2 * width), nn.Linear(2 * width, 2 * width)
        self.out = nn.Linear(2 * width, VOCAB)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        e = self.embed(nn.functional.pad(ids, (self.context - 1, 0)))  # (B, T + c - 1, d)
        windows = e.unfold(1, self.context, 1).flatten(2)  # (B, T, d * c)
        return self.out(torch.tanh(self.fc2(torch.tanh(self.fc1(windows)))))


def train(model: nn.Module, ids: torch.Tensor, steps: int, lr: float = 3e-3) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        batch = ids[(step * 16) % len(ids):][:16]
        loss = next_token_loss(logits_of(model, batch), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    model.eval()
    return losses


def block_densities(model, groups, data, num_probes, num_steps):
    """SLQ nodes and weights of each block's Hessian ``H_BB`` (weights averaged over probes)."""
    out = {}
    for label, names in groups.items():
        op = hesse.HessianOperator(model, next_token_loss, data, names, forward=logits_of)
        dens = hesse.spectral_density(op, num_probes=num_probes, num_steps=min(num_steps, op.shape[0]))
        nodes = dens.nodes.reshape(-1).double().numpy()
        weights = dens.weights.reshape(-1).double().numpy() / dens.num_probes
        out[label] = (op.shape[0], nodes, weights)
    return out


def distances(blocks, num_grid: int = 400):
    """Pairwise Jensen-Shannon distances of the smoothed densities on a common asinh axis, and
    Wasserstein-1 distances of the quadrature measures (in eigenvalue units)."""
    scale = 1e-3 * max(np.abs(n).max() for _, n, _ in blocks.values())
    lo = min(np.arcsinh(n / scale).min() for _, n, _ in blocks.values())
    hi = max(np.arcsinh(n / scale).max() for _, n, _ in blocks.values())
    grid = np.linspace(lo - 1, hi + 1, num_grid)
    sigma = (hi - lo + 2) / 100  # a 1% of the axis Gaussian: the SLQ nodes are point masses
    dens = {}
    for label, (_, nodes, weights) in blocks.items():
        z = np.arcsinh(nodes / scale)
        d = (weights[:, None] * np.exp(-0.5 * ((grid[None] - z[:, None]) / sigma) ** 2)).sum(0)
        dens[label] = d / d.sum()
    labels = list(blocks)
    js = np.array([[jensenshannon(dens[a], dens[b], base=2) for b in labels] for a in labels])
    w1 = np.array([[wasserstein_distance(blocks[a][1], blocks[b][1], blocks[a][2], blocks[b][2])
                    for b in labels] for a in labels])
    return grid, dens, js, w1, scale


def figure(grid, dens, js, scale, path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    ax, hm = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    peak = max(float(d.max()) for d in dens.values()) / (grid[1] - grid[0])
    for label, d in dens.items():
        ax.plot(grid, d / (grid[1] - grid[0]), label=label, lw=1.3)
    ax.set_yscale("log")
    ax.set_ylim(1e-4 * peak, 2 * peak)
    ticks = np.array([-1e3, -1e1, 0, 1e1, 1e3]) * scale
    ax.set_xticks(np.arcsinh(ticks / scale), [f"{t:.2g}" for t in ticks])
    ax.set_xlabel("eigenvalue (asinh axis)")
    ax.set_ylabel("density")
    ax.set_title("Hessian spectrum per block type (SLQ)")
    ax.legend(fontsize=7)
    labels = list(dens)
    im = hm.imshow(js, cmap="viridis", vmin=0, vmax=1)
    hm.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    hm.set_yticks(range(len(labels)), labels, fontsize=8)
    for i in range(len(labels)):
        for j in range(len(labels)):
            hm.text(j, i, f"{js[i, j]:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if js[i, j] < 0.6 else "black")
    hm.set_title("Jensen-Shannon distance between blocks")
    fig.colorbar(im, ax=hm, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def mean_offdiag(m):
    return float(m[~np.eye(len(m), dtype=bool)].mean())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="transformer_blocks.png", help="path of the figure (PNG)")
    parser.add_argument("--quick", action="store_true", help="fewer steps and probes (tests)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    width, steps, probes, lanczos = (16, 30, 2, 20) if args.quick else (32, 60, 4, 40)
    ids = grammar_text(256, seed=args.seed)
    data = [(ids[:64], ids[:64])]  # the curvature of the loss on 64 held sequences

    gpt = small_gpt(width)
    gpt_losses = train(gpt, ids, steps)
    groups = hesse.layer_groups(gpt, by="block_type", pool_layers=True)
    blocks = block_densities(gpt, groups, data, probes, lanczos)
    grid, dens, js, w1, scale = distances(blocks)

    mlp = TokenMLP(width)
    train(mlp, ids, steps)
    mlp_blocks = block_densities(mlp, hesse.layer_groups(mlp), data, probes, lanczos)
    _, _, mlp_js, _, _ = distances(mlp_blocks)

    print(f"GPT-2 (2 layers, width {width}): Adam {steps} steps, loss {gpt_losses[0]:.3f} -> {gpt_losses[-1]:.3f}")
    print(f"{'block':<16} {'n':>7} {'lambda_max':>11} {'lambda_min':>11} {'trace':>11}")
    for label, (n, nodes, weights) in blocks.items():
        print(f"{label:<16} {n:>7d} {nodes.max():>11.4g} {nodes.min():>11.4g} {n * float(weights @ nodes):>11.4g}")
    summary = {"gpt_mean_js": mean_offdiag(js), "mlp_mean_js": mean_offdiag(mlp_js),
               "gpt_mean_w1": mean_offdiag(w1), "labels": list(blocks), "js": js.tolist()}
    print(f"mean pairwise Jensen-Shannon distance: GPT blocks {summary['gpt_mean_js']:.3f}; "
          f"for comparison, the MLP's layers {summary['mlp_mean_js']:.3f}")
    figure(grid, dens, js, scale, args.out)
    print(f"figure: {args.out} ({time.perf_counter() - start:.1f} s)")
    return summary


if __name__ == "__main__":
    main()
