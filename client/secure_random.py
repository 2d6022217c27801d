"""DP-SGD's randomness: Poisson batches and Gaussian noise from a 128-bit secret key.

Why not ``torch.Generator``: torch's CPU generator is a Mersenne Twister that keeps only the
low 32 bits of its seed (``manual_seed(s)`` and ``manual_seed(s % 2**32)`` give one stream,
and so does ``torch.manual_seed``). An attacker who makes a clinic take one step per round
and sees a unit that receives pure noise (a dead ReLU, say) can try all 2**32 seeds until the
regenerated noise matches, subtract the noise everywhere and read the clipped gradients of
the sampled patients: DP-SGD's guarantee holds only for noise nobody can reproduce.

Here both the batches and the noise come from numpy's Philox4x64-10, a counter-based
generator built like a block cipher (Salmon et al., "Parallel random numbers: as easy as
1, 2, 3", SC 2011), whose whole secret is its 128-bit key. ``Philox(key=k)`` uses ``k``
itself as that key, so every one of the 128 bits that :func:`secrets.randbits` draws from the
operating system's CSPRNG is in the state, which a reader can check (seeding through a
``SeedSequence`` would first hash the bits into the key). Finding the noise means searching
2**128 keys. Opacus's own ``secure_mode`` would use ``torchcsprng``, which has no build for
this torch, so the Opacus engine takes its batches and noise from here too.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterator
from typing import Final

import numpy as np
import torch

__all__ = ["DpRandom"]

KEY_BITS: Final = 128  # Philox4x64's key: two 64-bit words
STEPS_PER_DRAW: Final = 256  # Poisson batches drawn in one go; bounds the draw's memory


class DpRandom:
    """The one source of randomness of a DP-SGD round, in both engines.

    Make one with :meth:`secret` (production) or :meth:`from_seed` (tests and benchmarks);
    the engines draw from it in the same order (batches ``STEPS_PER_DRAW`` steps ahead, noise
    parameter by parameter in ``model.parameters()`` order), so one seed gives both engines
    the same batches and the same noise.
    """

    def __init__(self, key: int) -> None:
        """Philox keyed with ``key`` (``0 <= key < 2**128``), its counter at zero."""
        self._generator = np.random.Generator(np.random.Philox(key=key))

    @classmethod
    def secret(cls) -> DpRandom:
        """A generator nobody can predict or replay, not even the clinic's operator: the
        key is 128 bits from the operating system's CSPRNG, never stored or logged."""
        return cls(secrets.randbits(KEY_BITS))

    @classmethod
    def from_seed(cls, seed: int) -> DpRandom:
        """A reproducible generator for tests and benchmarks: the key is ``seed mod 2**128``,
        so seeds of any size that differ anywhere in their low 128 bits give unrelated
        streams (torch's generator tells apart only the low 32)."""
        return cls(seed % 2**KEY_BITS)

    def poisson_batches(
        self,
        n: int,
        sample_rate: float,
        steps: int,
        *,
        draws_per_step: int | None = None,
    ) -> Iterator[torch.Tensor]:
        """Sorted record indices of ``steps`` Poisson batches: each of ``n`` records is in
        each batch independently with probability ``sample_rate``, the distribution of
        Opacus's ``UniformWithReplacementSampler``.

        The gaps between a Bernoulli(q) process's successes are i.i.d. Geometric(q), so a
        batch costs O(batch) draws instead of one uniform per record (20k uniforms per step
        took as long as the model's forward pass), and many steps are drawn in one call.
        ``draws_per_step`` (tests only) overrides how many gaps a step draws up front; by
        default they cover all ``n`` records except with probability ~1e-9, and a step that
        runs short draws more.
        """
        if sample_rate >= 1.0:
            yield from (torch.arange(n) for _ in range(steps))
            return
        mean = n * sample_rate
        draws = draws_per_step or int(mean + 6.0 * math.sqrt(mean) + 16)
        for first in range(0, steps, STEPS_PER_DRAW):
            shape = (min(STEPS_PER_DRAW, steps - first), draws)
            positions = self._gap_sums(shape, sample_rate)
            positions -= 1
            sizes = (positions < n).sum(axis=1).tolist()
            for row, size in zip(positions, sizes, strict=True):
                batch = row[:size] if size < draws else self._complete(row, n, sample_rate)
                yield torch.from_numpy(batch)

    def normal_like(self, tensor: torch.Tensor, std: float) -> torch.Tensor:
        """Gaussian noise of std ``std`` with ``tensor``'s shape, dtype and device, drawn in
        one call (float64 for a float64 tensor, float32 otherwise)."""
        dtype = np.float64 if tensor.dtype == torch.float64 else np.float32
        noise = self._generator.standard_normal(tuple(tensor.shape), dtype=dtype)
        noise *= std
        return torch.from_numpy(noise).to(device=tensor.device, dtype=tensor.dtype)

    def _gap_sums(self, shape: tuple[int, ...], sample_rate: float) -> np.ndarray:
        gaps = self._generator.geometric(sample_rate, size=shape)
        # numpy draws a gap as ceil(E / -log(1 - q)) with E exponential; an E of exactly 0
        # (probability ~2^-53) would give a gap of 0, i.e. a record twice: keep gaps ≥ 1.
        np.maximum(gaps, 1, out=gaps)
        return np.cumsum(gaps, axis=-1, out=gaps)

    def _complete(self, row: np.ndarray, n: int, sample_rate: float) -> np.ndarray:
        """Continue a batch whose drawn gaps ended before the last record."""
        pieces = [row]
        while pieces[-1][-1] < n:
            pieces.append(self._gap_sums((len(row),), sample_rate) + pieces[-1][-1])
        indices = np.concatenate(pieces)
        return indices[indices < n]
