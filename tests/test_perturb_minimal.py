"""Acceptance of the minimal-perturbation attacks (L-BFGS, C&W) against PGD on Lite0.

All 12 (photo, target) pairs in one batch at the model's resolution (each photo resized
and centre-cropped to 224x224 first), which keeps compile time down; L-BFGS, by far the
slowest, one target per photo. Success is judged on
the PNG as written and read back.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_perturb import SAMPLES, TARGETS, judge

from fooltools import attacks, io

LBFGS_PAIRS = [0, 4, 8, 9]  # (photo, target): (0, 0), (1, 1), (2, 2), (3, 0)


@pytest.fixture(scope="module")
def outcomes(lite0, tmp_path_factory):
    """Per method: (success, L2, L-inf in 0-255) per (photo, target) pair."""
    tmp = tmp_path_factory.mktemp("adv")
    photos = [jnp.asarray(io.read_image(io.sample_path(s))) for s in SAMPLES]
    small = [io.quantize(io.center_crop(io.resize_shorter(x, 224), 224)) for x in photos]
    targets = jnp.asarray(TARGETS * len(SAMPLES))
    batch = jnp.stack([x for x in small for _ in TARGETS])
    originals = [x for x in small for _ in TARGETS]
    methods = {
        "pgd": attacks.pgd(lite0.logits, lite0.params, eps=8 / 255, steps=40),
        "lbfgs": attacks.lbfgs(lite0.logits, lite0.params, steps=20, search_steps=2),
        "cw": attacks.cw(lite0.logits, lite0.params, steps=20, search_steps=2),
    }
    out = {}
    for name, run in methods.items():
        # L-BFGS (the slowest by far) gets one target per photo: pairs LBFGS_PAIRS.
        idx = jnp.asarray(LBFGS_PAIRS) if name == "lbfgs" else jnp.arange(len(originals))
        res = run(jax.random.key(0), batch[idx], targets[idx])
        out[name] = judge(lite0, tmp, name, res, [originals[i] for i in idx], targets[idx])
    return out


def test_pgd_succeeds_on_every_pair_at_the_model_resolution(outcomes):
    assert len(outcomes["pgd"]) == 3 * len(SAMPLES)
    assert all(ok for ok, _, _ in outcomes["pgd"])
    assert max(linf for _, _, linf in outcomes["pgd"]) <= 8 + 1e-3


@pytest.mark.parametrize("method", ["lbfgs", "cw"])
def test_minimal_attacks_succeed_with_smaller_l2_than_pgd(outcomes, method):
    assert all(ok for ok, _, _ in outcomes[method])
    median = np.median([l2 for _, l2, _ in outcomes[method]])
    pgd = outcomes["pgd"] if method == "cw" else [outcomes["pgd"][i] for i in LBFGS_PAIRS]
    pgd_median = np.median([l2 for _, l2, _ in pgd])  # the same pairs
    assert median < pgd_median, (method, median, pgd_median)
