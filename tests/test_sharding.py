"""Data parallelism: two forced CPU devices give the single-device results (to 1e-5)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from fooltools import sharding

PROBE = Path(__file__).with_name("sharding_probe.py")


def test_one_device_calls_the_function_unchanged():
    assert jax.local_device_count() == 1 and sharding.local_mesh() is None
    fn = sharding.data_parallel(lambda p, x: x * p, 2.0)
    np.testing.assert_array_equal(fn(np.arange(3.0)), [0.0, 2.0, 4.0])


@pytest.fixture(scope="module")
def sharded():
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "PYTHONPATH": str(PROBE.parent),
    }
    done = subprocess.run(
        [sys.executable, str(PROBE)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_two_devices_match_one(sharded):
    sys.path.insert(0, str(PROBE.parent))
    import sharding_probe

    single = sharding_probe.probe()
    assert single["devices"] == 1 and sharded["devices"] == 2
    for key in ("direct", "direct-lookahead", "detect_scores", "vanish"):
        np.testing.assert_allclose(sharded[key], single[key], rtol=0, atol=1e-5, err_msg=key)
    for run in (single, sharded):
        assert run["direct-lookahead"] == run["direct"]
    assert single["vanish"][2] > 0  # the detector found objects to make vanish
