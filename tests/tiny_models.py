"""Models small enough that a test can reason about every output pixel."""
import torch


class PixelModel(torch.nn.Module):
    """A 1x1 conv: every output pixel sees only its input pixel, so windows, crops and shards cannot change it."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 19, 1)

    def forward(self, x):
        return {"out": self.conv(x)}
