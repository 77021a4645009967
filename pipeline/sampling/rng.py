"""Counter-based random numbers: a value depends only on (seed, start, walk, step, stream).

Walks must not depend on partitioning, task retries or the execution mode, so
no generator state is carried anywhere: each number is a hash (SplitMix64's
finaliser, applied in a chain) of the counters that identify it. Everything is
vectorised over NumPy uint64 arrays, whose arithmetic wraps modulo 2**64.
"""
from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = (np.uint64(s) for s in (30, 27, 31, 11))
_TO_UNIT = 1.0 / float(1 << 53)

# Streams: which random number of a step this is.
STOP, PICK, ACCEPT = 0, 1, 2
STREAMS_PER_HALF_HOP = 2


def mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a bijective avalanche of a uint64 array."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> _S30)) * _M1
        z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def walker_keys(seed: int, start: np.ndarray, walk: np.ndarray) -> np.ndarray:
    """One key per walker, from the seed, its start node and its walk index."""
    k = mix(np.full(start.shape, seed & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64))
    k = mix(k ^ start.astype(np.uint64))
    return mix(k ^ walk.astype(np.uint64))


def uniform(keys: np.ndarray, counter: int) -> np.ndarray:
    """Uniform float64 in [0, 1) for each key at this counter (53 random bits)."""
    h = mix(keys ^ mix(np.uint64(counter) + np.zeros_like(keys)))
    return (h >> _S11).astype(np.float64) * _TO_UNIT


def counter(step: int, half_hop: int, stream: int) -> int:
    """The counter of a step's random number: distinct for every (step, half hop, stream)."""
    return (step * 4 + half_hop) * 4 + stream
