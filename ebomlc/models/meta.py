"""The meta model g_alpha of MLC/MLC-D/EBOMLC: corrected label distribution from (h(x), noisy label).

Paper, Sec. VI-A: "an embedding layer of size (C, 128) to embed the input noisy labels ... a three-layer
feedforward network for g_alpha" that "outputs a categorical distribution over classes". Hidden width 128,
tanh activations and the initialisation follow MLC's public meta network. The initialisation matters: with
the Embedding's default N(0, 1) vectors the label dominates the input, and under EBOMLC's Eq. (9), which
rewards predicting the given clean label, the meta model learns to copy labels instead of correcting them
(README, "Label correction, as measured"). The features h(x) are the main model's pooled
features, detached by the caller (the feature extractor is frozen with respect to alpha).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


# How the label embeddings start (method option meta_embedding_init): "xavier" as MLC's public meta network,
# or "normal", N(0, 1), torch.nn.Embedding's default.
EMBEDDING_INITS = ("xavier", "normal")


class MetaLabelCorrector(nn.Module):
    def __init__(self, feature_dim: int, num_classes: int, embedding_dim: int = 128, hidden_dim: int = 128,
                 embedding_init: str = "xavier"):
        super().__init__()
        if embedding_init not in EMBEDDING_INITS:
            raise ValueError(f"embedding_init must be one of {', '.join(EMBEDDING_INITS)}, got {embedding_init!r}")
        self.label_embedding = nn.Embedding(num_classes, embedding_dim)
        self.net = nn.Sequential(
            nn.Linear(feature_dim + embedding_dim, hidden_dim), nn.Tanh(),
            nn.Linear(hidden_dim, hidden_dim), nn.Tanh(),
            nn.Linear(hidden_dim, num_classes),
        )
        # MLC's public meta network: Xavier-uniform label embeddings (small next to N(0, 1), the Embedding
        # default, which "normal" keeps), Xavier-normal layers, zero biases
        if embedding_init == "xavier":
            nn.init.xavier_uniform_(self.label_embedding.weight)
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def logits(self, features: Tensor, labels: Tensor) -> Tensor:
        """(B, F) features and (B,) labels -> (B, K) unnormalised scores."""
        return self.net(torch.cat([features, self.label_embedding(labels)], dim=1))

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        """(B, K) corrected-label distribution g_alpha(h(x), y); rows sum to 1."""
        return F.softmax(self.logits(features, labels), dim=1)
