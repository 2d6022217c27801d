"""DP-SGD's randomness has a 128-bit key: every key bit changes the batches and the noise.

The attack these tests rule out: torch's CPU generator keeps only the low 32 bits of a seed,
so ``manual_seed(s)`` and ``manual_seed(s + 2**40)`` give one noise stream and a search over
2**32 seeds recovers the noise of any round.
"""

from __future__ import annotations

import secrets

import pytest
import torch

from oralfed.client.secure_random import DpRandom

SEED = 123_456_789  # below 2**32: the tests set one higher bit
HIGH_BITS = [32, 40, 63, 64, 70, 127]


def batches(rng: DpRandom) -> list[list[int]]:
    return [batch.tolist() for batch in rng.poisson_batches(500, 0.1, 3)]


def noise(rng: DpRandom) -> torch.Tensor:
    return rng.normal_like(torch.empty(64, 23), 1.0)


@pytest.mark.parametrize("bit", HIGH_BITS)
def test_seeds_that_differ_only_in_a_high_bit_give_other_batches_and_other_noise(
    bit: int,
) -> None:
    low, high = DpRandom.from_seed(SEED), DpRandom.from_seed(SEED + 2**bit)
    assert batches(low) != batches(high)
    low, high = DpRandom.from_seed(SEED), DpRandom.from_seed(SEED + 2**bit)
    assert not torch.equal(noise(low), noise(high))


def test_the_same_seed_repeats_exactly_and_the_key_is_the_seed_mod_2_to_the_128() -> None:
    for seed in (SEED, -1, 2**200 + 7):
        first, second = DpRandom.from_seed(seed), DpRandom.from_seed(seed)
        assert batches(first) == batches(second)
        torch.testing.assert_close(noise(first), noise(second), rtol=0, atol=0)
    wrapped = DpRandom.from_seed(SEED + 2**128)
    torch.testing.assert_close(noise(wrapped), noise(DpRandom.from_seed(SEED)), rtol=0, atol=0)


def test_two_secret_generators_differ() -> None:
    first, second = DpRandom.secret(), DpRandom.secret()
    assert batches(first) != batches(second)
    assert not torch.equal(noise(first), noise(second))


def test_the_secret_key_is_128_bits_from_the_operating_system(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    requested: list[int] = []
    drawn: list[int] = []
    system_randbits = secrets.randbits

    def recording_randbits(bits: int) -> int:
        requested.append(bits)
        drawn.append(system_randbits(bits))
        return drawn[-1]

    monkeypatch.setattr(secrets, "randbits", recording_randbits)
    rng = DpRandom.secret()
    assert requested == [128]
    # The drawn bits are the key itself, all of them: the stream is that of the same key.
    torch.testing.assert_close(noise(rng), noise(DpRandom.from_seed(drawn[0])), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_noise_has_the_tensor_shape_and_dtype_and_the_given_std(dtype: torch.dtype) -> None:
    """Mean and std of 200k draws, each within 5 standard errors (a correct generator fails
    with probability below 1e-6)."""
    drawn = DpRandom.from_seed(3).normal_like(torch.zeros(400, 500, dtype=dtype), 2.5)
    assert drawn.shape == (400, 500) and drawn.dtype == dtype
    count = drawn.numel()
    assert abs(float(drawn.mean())) < 5 * 2.5 / count**0.5
    assert abs(float(drawn.std()) / 2.5 - 1) < 5 / (2 * count) ** 0.5
