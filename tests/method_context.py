"""A MethodContext built by hand on random data, as the trainer builds it, for tests of single steps.

Tiny: a ResNet-8 of width 4 on 8x8 images, 4 classes, batches of 8 (imported by the method tests).
"""
from __future__ import annotations

import torch

from ebomlc.config import TrialConfig
from ebomlc.methods import METHODS, Batch, Method, MethodContext
from ebomlc.models import MetaLabelCorrector, build_resnet

NUM_CLASSES, IMAGE_SIZE, BATCH, WIDTH = 4, 8, 8, 4


def tiny_context(method: str, dtype: torch.dtype = torch.float32, **overrides) -> MethodContext:
    config = TrialConfig(method=method, model="resnet8", width=WIDTH, batch_size=BATCH, clean_batch_size=BATCH,
                         epochs=2, device="cpu", **overrides).validated()
    g = torch.Generator().manual_seed(0)
    noisy_x = torch.randint(0, 256, (5 * BATCH, 3, IMAGE_SIZE, IMAGE_SIZE), generator=g, dtype=torch.uint8)
    clean_x = torch.randint(0, 256, (2 * BATCH, 3, IMAGE_SIZE, IMAGE_SIZE), generator=g, dtype=torch.uint8)
    torch.manual_seed(0)
    return MethodContext(
        config=config, num_classes=NUM_CLASSES, device=torch.device("cpu"), steps_per_epoch=5,
        noisy_x=noisy_x, noisy_y=torch.randint(0, NUM_CLASSES, (len(noisy_x),), generator=g),
        clean_x=clean_x, clean_y=torch.randint(0, NUM_CLASSES, (len(clean_x),), generator=g),
        normalize=lambda x: (x.to(dtype) - 127.5) / 64.0,
        build_model=lambda: build_resnet("resnet8", NUM_CLASSES, WIDTH).to(dtype),
        build_meta_model=lambda: MetaLabelCorrector(4 * WIDTH, NUM_CLASSES).to(dtype),
        generator=torch.Generator().manual_seed(0),
    )


def tiny_method(method: str, dtype: torch.dtype = torch.float32, **overrides) -> tuple[Method, Batch, Batch]:
    """The method in training mode with its first noisy and clean batches."""
    ctx = tiny_context(method, dtype, **overrides)
    instance = METHODS[method](ctx)
    instance.train(True)
    index = torch.arange(BATCH)
    noisy = Batch(ctx.normalize(ctx.noisy_x[:BATCH]), ctx.noisy_y[:BATCH], index)
    clean = Batch(ctx.normalize(ctx.clean_x[:BATCH]), ctx.clean_y[:BATCH], index)
    return instance, noisy, clean
