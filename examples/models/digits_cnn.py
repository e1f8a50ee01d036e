"""A model file for ``hesse spectrum`` / ``hesse report``: a CNN with BatchNorm on 8x8 digits.

    hesse spectrum --model examples/models/digits_cnn.py:make --per-layer

The data is a DataLoader of 4 batches of 64 images: the operators weight batches by their size, so
the curvature is that of the mean loss over all 256 images. BatchNorm is evaluated with its
running statistics (the model's eval mode), the same function at every product; the model is
trained briefly first so those statistics describe the data.
"""

from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hesse.demo_models import digits_cnn, digits_data, train


def make(num_samples: int = 256, channels: int = 8, train_steps: int = 30) -> dict:
    X, y = digits_data(num_samples, image=True)
    model = digits_cnn(channels=channels, seed=0)  # conv-BN-ReLU-conv-BN-ReLU-pool-linear
    train(model, X, y, steps=train_steps, lr=0.1)
    loader = DataLoader(TensorDataset(X, y), batch_size=64, shuffle=False)
    return {"model": model, "loss_fn": nn.CrossEntropyLoss(), "data": loader}
