"""The Philox4x32-10 core: known-answer vectors, the uint32 → float map, Triton equivalence, seeds."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from scipy import stats

from dropkit import rng

# Random123 tests/kat_vectors, "philox4x32 10" lines: counter (4 words), key (2 words) -> output (4 words).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize(("counter", "key", "expected"), KAT, ids=["zeros", "ones", "pi"])
def test_philox_known_answers(counter, key, expected):
    words = rng.philox4x32(*(torch.tensor([c], dtype=torch.int64) for c in counter), *key)
    assert tuple(int(w) for w in words) == expected


def test_numba_philox_known_answers():
    from dropkit.kernels import cpu

    words = cpu._philox4(np.uint64(0), np.uint32(0), np.uint32(0))
    assert tuple(int(w) for w in words) == KAT[0][2]
    # counter (2^32 + 3) -> (3, 1, 0, 0): the high half goes to word 1, as the torch-ops version does
    key = (0xA4093822, 0x299F31D0)
    expected = rng.philox4x32(*(torch.tensor([c]) for c in (3, 1, 0, 0)), *key)
    got = cpu._philox4(np.uint64(2**32 + 3), np.uint32(key[0]), np.uint32(key[1]))
    assert [int(w) for w in got] == [int(w) for w in expected]


# uint32 word -> float32 uniform, Triton's uint_to_uniform_float (exact float32 bit patterns).
UNIFORM_KAT = [
    (0x00000000, 0.0),
    (0x00000001, float.fromhex("0x1.fffffep-32")),
    (0x40000000, float.fromhex("0x1.fffffep-2")),
    (0x7FFFFFFF, float.fromhex("0x1.fffffep-1")),  # the largest value: 1 - 2^-24 < 1
    (0x80000000, float.fromhex("0x1.fffffep-1")),  # negative int32 folds with ~x
    (0xBFFFFFFF, float.fromhex("0x1.fffffep-2")),
    (0xFFFFFFFE, float.fromhex("0x1.fffffep-32")),
    (0xFFFFFFFF, 0.0),
    (0x00BC614E, float.fromhex("0x1.78c29ap-8")),
]


def test_uint32_to_uniform_known_answers():
    words = torch.tensor([w for w, _ in UNIFORM_KAT], dtype=torch.int64)
    got = rng.uint32_to_uniform(words)
    assert got.dtype == torch.float32
    assert got.tolist() == [u for _, u in UNIFORM_KAT]


def test_uniform_range_and_offsets():
    u = rng.uniform((3, 5), seed=123, offset=7)
    assert u.shape == (3, 5) and u.dtype == torch.float32
    assert bool(((u >= 0) & (u < 1)).all())
    # element n has global index offset + n: a shifted window of the same stream
    assert torch.equal(rng.uniform(20, seed=123, offset=2)[5:], u.flatten())
    assert not torch.equal(rng.uniform(15, seed=124, offset=7), u.flatten())
    long = rng.uniform(5000, seed=9)
    for offset, n in [(0, 1), (255, 3), (1000, 50), (1023, 2), (2047, 1500)]:
        assert torch.equal(rng.uniform(n, seed=9, offset=offset), long[offset : offset + n])


def test_grouped_layout_four_words_per_counter():
    # global index m -> word (m // 256) % 4 of counter 256 * (m // 1024) + m % 256
    seed, m = 77, torch.arange(3000)
    words = rng.random_words(3 * 256, seed)
    counter, slot = 256 * (m // 1024) + m % 256, (m // 256) % 4
    expected = torch.stack(words)[slot, counter]
    assert torch.equal(rng.element_words(3000, seed), expected)
    assert rng.LANES == 256 and rng.GROUP == 1024


def test_counter_high_word_is_used():
    # indices beyond 2^32 counters put the counter's high 32 bits in word 1: no wrap-around to small counters
    far = 1024 * 2**32
    assert not torch.equal(rng.uniform(8, seed=5, offset=far), rng.uniform(8, seed=5, offset=0))
    words = rng.random_words(1, seed=0, offset=2**32 + 3)
    expected = rng.philox4x32(*(torch.tensor([c]) for c in (3, 1, 0, 0)), 0, 0)
    assert [int(w) for w in words] == [int(w) for w in expected]


@pytest.mark.statistical
def test_uniform_is_uniform():
    # Kolmogorov-Smirnov against U[0, 1) on 200k draws, fixed seed; reject only at p < 0.01
    u = rng.uniform(200_000, seed=2024).double().numpy()
    assert stats.kstest(u, "uniform").pvalue > 0.01
    # successive counters are uncorrelated: lag-1 correlation within 4.5 standard errors (1/sqrt(n))
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 4.5 / np.sqrt(len(u))


@pytest.mark.statistical
def test_normal_moments():
    z = rng.normal(200_000, seed=7).double()
    se = 1 / np.sqrt(len(z))
    assert abs(z.mean().item()) < 5 * se  # mean 0
    assert abs(z.var().item() - 1) < 5 * np.sqrt(2) * se  # variance 1 (var of s^2 ~ 2/n)
    assert stats.kstest(z.numpy(), "norm").pvalue > 0.01


@pytest.mark.parametrize("p", [0.0, 1e-10, 0.1, 0.2, 1 / 3, 0.5, 0.7, 0.9, 0.999999, 1.0])
def test_keep_threshold_matches_float_comparison(p):
    t = rng.keep_threshold(p)
    scale = np.float32(rng.UNIFORM_SCALE)

    def u(k: int) -> np.float32:
        return np.float32(k) * scale

    assert 0 <= t <= 2**31
    if t < 2**31:
        assert u(t) >= np.float32(p)
    if t > 0:
        assert u(t - 1) < np.float32(p)


def test_keep_threshold_ends():
    assert rng.keep_threshold(0.0) == 0  # keep everything
    assert rng.keep_threshold(1.0) == 2**31  # fold(w) < 2^31 always: keep nothing


def test_draw_seed_follows_manual_seed_and_generators():
    torch.manual_seed(0)
    a = [rng.draw_seed() for _ in range(3)]
    torch.manual_seed(0)
    assert [rng.draw_seed() for _ in range(3)] == a
    assert len(set(a)) == 3  # the global generator advances
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert rng.draw_seed(g1) == rng.draw_seed(g2)
    assert all(0 <= s < 2**63 for s in a)


TRITON_SCRIPT = textwrap.dedent(
    """
    import torch, triton, triton.language as tl
    from dropkit import rng

    @triton.jit
    def _draw(out_u, out_z, out_u0, seed, first_counter, LANES: tl.constexpr):
        # one group: LANES counters, four words each, stored word-major (dropkit's layout)
        lane = tl.arange(0, LANES)
        ctr = first_counter + lane.to(tl.int64)
        u0, u1, u2, u3 = tl.rand4x(seed, ctr)
        tl.store(out_u + lane, u0)
        tl.store(out_u + LANES + lane, u1)
        tl.store(out_u + 2 * LANES + lane, u2)
        tl.store(out_u + 3 * LANES + lane, u3)
        z0, z1, z2, z3 = tl.randn4x(seed, ctr)
        tl.store(out_z + lane, z0)
        tl.store(out_z + LANES + lane, z1)
        tl.store(out_z + 2 * LANES + lane, z2)
        tl.store(out_z + 3 * LANES + lane, z3)
        tl.store(out_u0 + lane, tl.rand(seed, ctr))

    L = rng.LANES
    for seed, group in [(0, 0), (12345, 3), (2**63 - 25, 2**24 - 1), (0xDEADBEEFCAFE, 2**33 + 5)]:
        u = torch.empty(4 * L, dtype=torch.float32)
        z = torch.empty(4 * L, dtype=torch.float32)
        u0 = torch.empty(L, dtype=torch.float32)
        _draw[(1,)](u, z, u0, seed, group * L, LANES=L)
        assert torch.equal(u, rng.uniform(4 * L, seed, offset=group * 4 * L)), (seed, group)
        assert torch.equal(u0, rng.uniform(L, seed, offset=group * 4 * L)), (seed, group)
        torch.testing.assert_close(z, rng.normal(4 * L, seed, offset=group * 4 * L), rtol=1e-5, atol=1e-5)
    print("TRITON-EQUIVALENT")
    """
)


def test_uniform_is_bit_identical_to_triton_rand():
    """Run tl.rand4x / tl.randn4x / tl.rand in Triton's interpreter (TRITON_INTERPRET=1) and compare."""
    pytest.importorskip("triton", reason="triton is part of the test extra on Linux x86_64")
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-c", TRITON_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "TRITON-EQUIVALENT" in result.stdout
