"""Tests for lamina_batch.seen: the DigestIndex counts exactly like a dict, in memory and after spilling to disk."""

from __future__ import annotations

import hashlib
import random

import pytest

from lamina_batch.seen import DigestIndex


def _d(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest()[:16]


@pytest.mark.parametrize("memory_entries", [1_000_000, 50, 1])
def test_counts_and_first_values_match_a_dict(memory_entries: int) -> None:
    """Sightings before and the first value agree with a plain dict, whether or not the index spilled."""
    rng = random.Random(7)
    reference: dict[bytes, list[int]] = {}
    with DigestIndex(memory_entries=memory_entries, batch=64, bloom_bits=1 << 12) as index:
        for step in range(5000):
            d = _d(rng.randrange(1500))
            before, first = index.see(d, step)
            ref = reference.setdefault(d, [0, step])
            assert (before, first) == (ref[0], ref[1])
            ref[0] += 1
        assert index.spilled == (memory_entries < 1500)


def test_a_tiny_bloom_filter_is_slower_never_wrong() -> None:
    """A Bloom filter that says 'maybe' for everything only sends more lookups to disk; the counts stay exact."""
    with DigestIndex(memory_entries=4, batch=8, bloom_bits=8) as index:
        assert [index.see(_d(i % 20))[0] for i in range(60)] == [i // 20 for i in range(60)]


def test_spilled_memory_is_bounded_by_the_batch() -> None:
    """After spilling, at most `batch` digests wait in memory; the rest is in the on-disk index."""
    with DigestIndex(memory_entries=10, batch=100, bloom_bits=1 << 16) as index:
        for i in range(5000):
            index.see(_d(i))
            assert len(index._mem) <= 100
        assert index.spilled


def test_bloom_bits_must_be_a_power_of_two() -> None:
    """The filter indexes with a mask, so its size must be a power of two."""
    with pytest.raises(ValueError, match="power of two"):
        DigestIndex(bloom_bits=1000)
