"""Plain training (empirical risk minimisation): cross-entropy on D ∪ D', the noisy labels taken as given.

The reference point of every table: what the noise does to a network that ignores it. Batches are
drawn uniformly from the union of the clean set D and the noisy set D' ("union" sampling), so every
training image is seen once per epoch.
"""
from __future__ import annotations

import torch.nn.functional as F

from ebomlc.methods.base import Batch, Method


class ERM(Method):
    name = "erm"
    sampling = "union"

    def step(self, noisy: Batch, clean: Batch | None):
        logits, _ = self.model(noisy.x)                 # (B, K)
        loss = F.cross_entropy(logits, noisy.y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.detach()}
