"""Class-balanced index splits of a training set: a subset, and clean D / validation / noisy D'.

    rng = np.random.default_rng([seed, stream])
    subset = class_balanced_subset(labels, 5000, 10, rng)                    # sorted positions
    clean, val, noisy = split_clean_noisy(labels[subset], 0.02, 10, rng)    # positions in labels[subset]

The three sets of `split_clean_noisy` are disjoint and cover every index exactly once: unlike the
public MLC / EBOMLC loaders, which let most of D (about 98%) reappear in D' with noisy labels, no
training image is in two sets here, and a test checks it.
"""
from __future__ import annotations

import numpy as np


def class_balanced_subset(labels: np.ndarray, size: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """`size` positions of `labels`, size // K from each class and one more from size % K classes.

    The classes that get the extra one and the members of each class are drawn with `rng`.
    Returns sorted int64 positions; raises ValueError if a class has too few samples.
    """
    labels = np.asarray(labels)
    if not num_classes <= size <= len(labels):
        raise ValueError(f"train_subset must be between the number of classes ({num_classes}) and the "
                         f"training set size ({len(labels)}), got {size}")
    per_class = np.full(num_classes, size // num_classes)
    per_class[rng.choice(num_classes, size=size % num_classes, replace=False)] += 1
    chosen = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class[c]:
            raise ValueError(f"train_subset={size} needs {per_class[c]} images of class {c}, "
                             f"which has only {len(members)}; use a smaller train_subset")
        chosen.append(rng.choice(members, size=per_class[c], replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def split_clean_noisy(labels: np.ndarray, clean_fraction: float, num_classes: int, rng: np.random.Generator,
                      validation_fraction: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split positions 0..N-1 into (clean_idx, val_idx, noisy_idx), class by class.

    For class c with n_c samples: round(clean_fraction * n_c) go to the clean set D, of which
    round(validation_fraction * |D_c|) are held out as the validation part; the rest of the class
    goes to the noisy set D'. Members are drawn with `rng`. Returns sorted int64 arrays, disjoint and
    together covering every position exactly once.

    labels: (N,) true labels in [0, K). Raises ValueError (naming the class) when a class would get no
    clean training sample, or no validation sample while validation_fraction > 0.
    """
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got values in [{labels.min()}, {labels.max()}]")
    clean, val, noisy = [], [], []
    for c in range(num_classes):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_clean, n_val = clean_sizes(len(members), clean_fraction, validation_fraction, which=f"class {c}")
        val.append(members[:n_val])
        clean.append(members[n_val:n_clean])
        noisy.append(members[n_clean:])
    return tuple(np.sort(np.concatenate(part)).astype(np.int64) for part in (clean, val, noisy))


def clean_sizes(class_size: int, clean_fraction: float, validation_fraction: float = 0.0, *,
                which: str = "a class") -> tuple[int, int]:
    """How many of a class's `class_size` samples go to D, and how many of those to D's validation part.

    Returns (n_clean, n_val) = (round(clean_fraction * class_size), round(validation_fraction * n_clean)).

    Raises ValueError (naming `which` class and the fix) when no clean training sample would remain,
    or when validation_fraction > 0 but no validation sample would.
    """
    n_clean = round(clean_fraction * class_size)
    n_val = round(validation_fraction * n_clean)
    if n_clean - n_val == 0:
        raise ValueError(f"{which} has {class_size} training images, so clean_fraction={clean_fraction} "
                         f"(validation_fraction={validation_fraction}) leaves it no clean training sample; "
                         "use a larger clean_fraction")
    if validation_fraction > 0 and n_val == 0:
        raise ValueError(f"{which} has {n_clean} clean images, so validation_fraction={validation_fraction} "
                         "gives it no validation sample; use a larger validation_fraction or clean_fraction")
    return n_clean, n_val
