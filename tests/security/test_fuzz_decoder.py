"""Fuzzing the decoder: random and mutated frame lists raise only DecodeError."""

from __future__ import annotations

import importlib.util
import os
import random
import subprocess
import sys
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.security.fuzz_targets import SEEDS, check, check_with_lookup, mutate
from tests.security.helpers import ROOT

frame = st.one_of(st.binary(max_size=300), st.sampled_from([None, 3, "str", 2.5]))


@settings(max_examples=2000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(st.lists(frame, max_size=6))
def test_random_frame_lists(frames: list[Any]) -> None:
    check(frames)
    check_with_lookup(frames)


@settings(max_examples=2000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(range(len(SEEDS))), st.integers(0, 2**32))
def test_mutated_messages(seed_no: int, rng_seed: int) -> None:
    frames = mutate(random.Random(rng_seed), SEEDS[seed_no])
    check(frames)
    check_with_lookup(frames)


def test_100k_seeded_mutations() -> None:
    rng = random.Random(20261124)
    decoded = 0
    for i in range(100_000):
        frames = mutate(rng, SEEDS[i % len(SEEDS)])
        if check(frames) is not None:
            decoded += 1
    # Re-signed mutants with a sound envelope do decode: the fuzzing reached
    # the checks past the signature, not just the first one.
    assert 0 < decoded < 100_000


def test_atheris_100k_runs() -> None:
    import pytest

    if importlib.util.find_spec("atheris") is None:
        pytest.skip("atheris is not installed (pip extra: test)")
    out = subprocess.run(
        [sys.executable, "-m", "tests.security.fuzz_targets", "-runs=100000", "-seed=1"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Done 100000 runs" in out.stderr
