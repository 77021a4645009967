"""Counter-based random numbers: a value depends only on (seed, start, walk, step, stream).

Walks and tie-breaks must not depend on partitioning, task retries or the
execution mode, so no generator state is carried anywhere: each number is a
hash (SplitMix64's finaliser, applied in a chain) of the counters that
identify it. Everything is
vectorised over NumPy uint64 arrays, whose arithmetic wraps modulo 2**64, and
stays in integers: a 64-bit hash gives two 32-bit draws.
"""
from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S27, _S30, _S31, _S32 = (np.uint64(s) for s in (27, 30, 31, 32))
_LOW = np.uint64(0xFFFFFFFF)
_TO_UNIT32 = 1.0 / float(1 << 32)

# Streams: which hash of a step this is (0 was the restart draw of sampled walks).
PICK = 1


def mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a bijective avalanche of a uint64 array (new array)."""
    z = x + _GOLDEN
    t = np.empty_like(z)
    np.right_shift(z, _S30, out=t)
    np.bitwise_xor(z, t, out=z)
    np.multiply(z, _M1, out=z)
    np.right_shift(z, _S27, out=t)
    np.bitwise_xor(z, t, out=z)
    np.multiply(z, _M2, out=z)
    np.right_shift(z, _S31, out=t)
    np.bitwise_xor(z, t, out=z)
    return z


def pair_key(seed: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A seeded 64-bit hash of each pair ``(a, b)`` (order matters)."""
    k = mix(np.full(np.shape(a), seed & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64))
    k = mix(k ^ np.asarray(a).astype(np.uint64))
    return mix(k ^ np.asarray(b).astype(np.uint64))


def walker_keys(seed: int, start: np.ndarray, walk: np.ndarray) -> np.ndarray:
    """One key per walker, from the seed, its start node and its walk index."""
    return pair_key(seed, start, walk)


def counter(step: int, half_hop: int, stream: int) -> int:
    """The counter of a step's hash: distinct for every (step, half hop, stream)."""
    return (step * 4 + half_hop) * 4 + stream


def bits(keys: np.ndarray, ctr: int) -> np.ndarray:
    """64 random bits per key at this counter."""
    salt = mix(np.array([ctr], dtype=np.uint64))[0]
    return mix(keys ^ salt)


def slot(h: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Uniform integer in ``[0, n)`` from the high 32 bits (multiply-shift, no division)."""
    return ((h >> _S32) * n.astype(np.uint64) >> _S32).astype(np.int64)


def unit(h: np.ndarray) -> np.ndarray:
    """Uniform float64 in [0, 1) from the low 32 bits."""
    return (h & _LOW).astype(np.float64) * _TO_UNIT32
