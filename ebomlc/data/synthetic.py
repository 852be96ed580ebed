"""A small learnable image dataset for tests and smoke runs: smooth class prototypes plus per-image noise.

    data = make_synthetic(600, 200, num_classes=4, image_size=8, seed=0)
    data.train_x.shape, data.train_x.dtype     # (600, 3, 8, 8) uint8, like CIFAR's (N, 3, 32, 32)

Each class k has a prototype: a random 3 x 4 x 4 Gaussian field, upsampled bilinearly to S x S (so it
is smooth, a low-frequency colour pattern). An image of class k is

    pixels = 128 + 30 * (a * prototype_k + nuisance + pixel_noise), clipped to [0, 255]

with a per-image contrast a ~ U(0.6, 1.4), a nuisance field drawn like a prototype but new for every
image and 1.5 times as strong, and i.i.d. pixel noise (standard deviation 0.5). So a class is not
readable from a single pixel or a single step: a ResNet-8 (width 8, SGD lr 0.1, batch 32, clean labels)
on 600 images of 8 x 8 in 4 classes is at chance after its first step and at about 90% test accuracy
after 3 epochs (seeds 0-2). Train and test images come from the same prototypes; both are class-balanced
(the first N mod K classes get one extra image) and shuffled.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ebomlc.data.cifar import ImageDataset

GRID = 4              # prototypes and nuisance fields are drawn on a GRID x GRID grid, then upsampled
SCALE = 30.0          # pixel units per unit of the fields
NUISANCE = 1.5        # standard deviation of the per-image nuisance field (prototypes have 1)
PIXEL_NOISE = 0.5     # standard deviation of the i.i.d. pixel noise
CONTRAST = (0.6, 1.4)  # range of the per-image prototype contrast a


def make_synthetic(num_train: int, num_test: int, num_classes: int, image_size: int, seed) -> ImageDataset:
    """Train and test images (N, 3, S, S) uint8 with int64 labels; same arguments, same data.

    seed: anything numpy.random.default_rng accepts (an int, or a list of ints for a separate stream).
    Class names are "class_0", "class_1", ...
    """
    rng = np.random.default_rng(seed)
    prototypes = _smooth_fields(rng, num_classes, image_size)          # (K, 3, S, S)

    def images(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = rng.permutation(np.arange(count) % num_classes)      # balanced, shuffled
        contrast = rng.uniform(*CONTRAST, size=(count, 1, 1, 1))
        fields = (contrast * prototypes[labels] + NUISANCE * _smooth_fields(rng, count, image_size)
                  + PIXEL_NOISE * rng.standard_normal((count, 3, image_size, image_size)))
        pixels = np.clip(np.rint(128.0 + SCALE * fields), 0, 255).astype(np.uint8)
        return torch.from_numpy(pixels), torch.from_numpy(labels.astype(np.int64))

    train_x, train_y = images(num_train)
    test_x, test_y = images(num_test)
    return ImageDataset(train_x, train_y, test_x, test_y, [f"class_{k}" for k in range(num_classes)])


def _smooth_fields(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    """(count, 3, size, size) standard-normal GRID x GRID fields upsampled bilinearly (smooth patterns)."""
    coarse = torch.from_numpy(rng.standard_normal((count, 3, GRID, GRID)))
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=True).numpy()
