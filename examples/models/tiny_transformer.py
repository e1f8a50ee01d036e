"""A model file for ``hesse spectrum`` / ``hesse report``: a one-layer transformer on generated sequences.

    hesse spectrum --model examples/models/tiny_transformer.py:make --k 3

The task: sequences of 8 tokens from a vocabulary of 10; the label is the token that occurs most
often (ties to the smallest). Solving it needs attention across positions. The model embeds
tokens and positions, applies one ``nn.TransformerEncoderLayer`` (2 heads, width 16, no dropout so
the loss is a deterministic function of the parameters), averages over positions and classifies.
hesse switches PyTorch's fused attention kernels, which have no double-backward rule, to the math
kernel for its own products (and warns once).
"""

import torch
from torch import nn

VOCAB, LENGTH, WIDTH = 10, 8, 16


class TinyTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.position = nn.Parameter(0.1 * torch.randn(LENGTH, WIDTH))
        self.encoder = nn.TransformerEncoderLayer(WIDTH, nhead=2, dim_feedforward=32, dropout=0.0,
                                                  batch_first=True)
        self.head = nn.Linear(WIDTH, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(tokens) + self.position)
        return self.head(h.mean(dim=1))


def sequences(num: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` random token sequences and the most frequent token of each."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (num, LENGTH), generator=gen)
    counts = torch.nn.functional.one_hot(tokens, VOCAB).sum(dim=1)
    return tokens, counts.argmax(dim=1)


def make(num_samples: int = 256, train_steps: int = 50) -> dict:
    torch.manual_seed(0)
    X, y = sequences(num_samples)
    model, loss_fn = TinyTransformer(), nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(train_steps):
        opt.zero_grad()
        loss_fn(model(X), y).backward()
        opt.step()
    return {"model": model, "loss_fn": loss_fn, "data": (X, y)}
