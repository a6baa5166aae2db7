"""airbench's initialisation of its teacher network (``airbench_whitened``), set before the
first training step:

- the frozen whitening stem (``layers.whitening_stem``) gets the eigenvectors of the training
  images' k x k patch covariance, each scaled to unit variance, and their negations; raw pixels
  go in (fnet_tf models normalise nothing outside the graph), so the per-channel mean and
  standard deviation are folded into the kernel and the bias;
- every group conv (``layers.conv_pool_group``) starts as the identity on its first
  ``C_in`` filters (PyTorch's ``dirac_``), the rest keep their initializer's draw.

After the stem is set it never changes (its layer is not trainable); a resumed run restores it
from the checkpoint like any weight.
"""
import re

import numpy as np

from fnet_tf.arch.layers import GROUP_CONV_TAG, WHITENING_SUFFIX

WHITENING_IMAGES = 5000  # airbench estimates the covariance from 5,000 training images
WHITENING_EPS = 5e-4     # added to each eigenvalue (of normalised pixels) before the sqrt
PATCH_CHUNK = 250        # images whose patches are held at once
_GROUP_CONV = re.compile(re.escape(GROUP_CONV_TAG) + r"\d+$")


def patches(images, kernel):
    """Every kernel x kernel patch of ``images`` (N, H, W, C) as rows of (kh, kw, C) order,
    the order of a Keras Conv2D kernel's first three axes."""
    n, h, w, c = images.shape
    rows = [images[:, dy:h - kernel + 1 + dy, dx:w - kernel + 1 + dx, :]
            for dy in range(kernel) for dx in range(kernel)]
    stacked = np.stack(rows, axis=3)  # N, H', W', k*k, C
    return stacked.reshape(-1, kernel * kernel * c)


def whitening_weights(images, kernel, eps=WHITENING_EPS):
    """(kernel (k, k, C, 2kkC), bias (2kkC,)) of a whitening conv for raw uint8 ``images``."""
    mean = images.mean(axis=(0, 1, 2), dtype=np.float64) / 255.0
    std = images.std(axis=(0, 1, 2), dtype=np.float64) / 255.0 + 1e-8
    size = kernel * kernel * images.shape[-1]
    covariance, count = np.zeros((size, size)), 0
    for start in range(0, len(images), PATCH_CHUNK):  # bounded memory at any image size
        x = (images[start:start + PATCH_CHUNK] / 255.0 - mean) / std
        rows = patches(x, kernel)
        covariance += rows.T @ rows
        count += len(rows)
    covariance /= count
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    basis = eigenvectors[:, order] / np.sqrt(eigenvalues[order] + eps)  # (kkC, kkC) columns
    filters = np.concatenate([basis, -basis], axis=1)                   # (kkC, 2kkC)
    c = images.shape[-1]
    # conv(raw) = sum f * ((raw/255 - mean) / std) = sum (f / (255 std)) raw - sum f mean / std
    per_input = np.tile(1.0 / std, kernel * kernel)
    kernel_raw = filters * (per_input / 255.0)[:, None]
    bias = -(filters * np.tile(mean / std, kernel * kernel)[:, None]).sum(axis=0)
    return (kernel_raw.reshape(kernel, kernel, c, -1).astype(np.float32),
            bias.astype(np.float32))


def dirac(kernel):
    """``kernel`` (kh, kw, C_in, C_out) with its first min(C_in, C_out) filters set to the
    identity (1 at the centre tap of their own input channel, 0 elsewhere)."""
    kh, kw, cin, cout = kernel.shape
    out = kernel.copy()
    n = min(cin, cout)
    out[:, :, :, :n] = 0.0
    out[kh // 2, kw // 2, np.arange(n), np.arange(n)] = 1.0
    return out


def prepare(model, train_images, seed=0):
    """Set ``model``'s whitening stems from ``train_images`` (uint8, N H W C) and dirac its
    group convs. Returns the number of layers changed (0 for models without them)."""
    changed = 0
    rng = np.random.default_rng([seed, 7])
    for layer in model.layers:
        if layer.name.endswith(WHITENING_SUFFIX):
            count = min(WHITENING_IMAGES, len(train_images))
            sample = train_images[rng.choice(len(train_images), count, replace=False)]
            layer.set_weights(list(whitening_weights(sample, layer.kernel_size[0])))
            changed += 1
        elif _GROUP_CONV.search(layer.name):
            layer.set_weights([dirac(layer.get_weights()[0])])
            changed += 1
    return changed
