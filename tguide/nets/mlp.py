"""A multilayer perceptron on flattened images: the architecture-without-convolutions baseline.

``MLP(in_features, hidden=(256, 128), num_classes)``: ``flatten`` → ``fc1`` (+ReLU) → ``fc2``
(+ReLU) … → ``head``. Hidden layers are named ``fc1, fc2, …`` (as ``named_modules()`` sees them);
``embed(x)`` returns the last hidden layer's activations (the penultimate features).

Shapes: ``x (B, *)`` with ``prod(*) == in_features`` → logits ``(B, num_classes)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["MLP"]


class MLP(nn.Module):
    """Fully connected ReLU network (see the module docstring)."""

    def __init__(self, in_features: int, hidden: Sequence[int] = (256, 128), num_classes: int = 10) -> None:
        super().__init__()
        hidden = [int(h) for h in hidden]
        if in_features < 1 or not hidden or min(hidden) < 1 or num_classes < 1:
            raise ValueError(
                f"MLP needs in_features ≥ 1, at least one hidden width ≥ 1 and num_classes ≥ 1; "
                f"got in_features={in_features}, hidden={hidden}, num_classes={num_classes}."
            )
        self.in_features = int(in_features)
        self.hidden_names: list[str] = []
        width = self.in_features
        for k, h in enumerate(hidden, 1):
            setattr(self, f"fc{k}", nn.Linear(width, h))
            self.hidden_names.append(f"fc{k}")
            width = h
        self.head = nn.Linear(width, num_classes)
        self.num_classes = num_classes

    def embed(self, x: Tensor) -> Tensor:
        """Last hidden activations ``(B, hidden[-1])``."""
        x = x.flatten(1)
        if x.shape[1] != self.in_features:
            raise ValueError(f"MLP expects {self.in_features} input values per sample, got {x.shape[1]}.")
        for name in self.hidden_names:
            x = torch.relu(getattr(self, name)(x))
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embed(x))
