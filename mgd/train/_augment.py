"""Image augmentation that is a deterministic function of (seed, step), so replays match."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

__all__ = ["Augment"]


@dataclasses.dataclass(frozen=True)
class Augment:
    """Random crop (after reflect padding) and horizontal flip of image batches.

    The randomness of step ``t`` comes from ``fold_in(augment_key, t)``, with ``augment_key``
    derived from the setup's seed, so the same (seed, step) always gives the same crops and
    flips and a replay of any step sees exactly the batch the first run saw. Crops and flips are
    linear in the input, so perturbation metagradients flow through them.

    Attributes:
      crop_padding: pixels of reflect padding on each side before a random crop to the original
        size; 0 disables cropping. Must be smaller than the image.
      flip: flip each image left-right with probability 1/2.

    Example:
      >>> setup = mgd.TrainingSetup(..., augment=mgd.train.Augment(crop_padding=4))
    """

    crop_padding: int = 4
    flip: bool = True

    def __post_init__(self):
        if self.crop_padding < 0:
            raise ValueError(f"Augment: crop_padding must be >= 0, got {self.crop_padding}")

    def check(self, input_shape: tuple[int, ...]) -> None:
        """Raises ``ValueError`` unless ``input_shape`` is an image ``(h, w, c)`` it can crop."""
        if len(input_shape) != 3:
            raise ValueError(
                f"augment needs image inputs (h, w, c), got input shape {input_shape}; "
                "pass augment=False"
            )
        if self.crop_padding >= min(input_shape[:2]):
            raise ValueError(
                f"Augment: crop_padding={self.crop_padding} must be below the image size "
                f"{input_shape[:2]}"
            )

    def __call__(self, x: jax.Array, key: jax.Array) -> jax.Array:
        """Augments the batch ``x`` of shape ``(b, h, w, c)`` with randomness from ``key``."""
        b, h, w, _ = x.shape
        k_crop, k_flip = jax.random.split(key)
        p = self.crop_padding
        if p:
            padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
            offsets = jax.random.randint(k_crop, (b, 2), 0, 2 * p + 1)

            def crop(img, off):
                return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))

            x = jax.vmap(crop)(padded, offsets)
        if self.flip:
            flips = jax.random.bernoulli(k_flip, 0.5, (b, 1, 1, 1))
            x = jnp.where(flips, x[:, :, ::-1], x)
        return x
