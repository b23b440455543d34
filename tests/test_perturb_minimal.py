"""Acceptance of the minimal-perturbation attacks (L-BFGS, C&W) against PGD on Lite0.

PGD on all 12 (photo, target) pairs in one batch at the model's resolution (each photo
resized and centre-cropped to 224x224 first), which keeps compile time down; the minimal
attacks on one target per photo (every target once), in a light configuration: their L2
is 4-7x below PGD's there (L-BFGS ~300, C&W ~500, PGD ~1950 in 0-255 units), so the
comparison keeps a wide margin. Success is judged on the PNG as written and read back.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_perturb import SAMPLES, TARGETS, judge

from fooltools import attacks, io

MINIMAL_PAIRS = [0, 4, 8, 9]  # (photo, target): (0, 0), (1, 1), (2, 2), (3, 0)


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
        # 10 steps (of 2.5 x 8/255 / 10) reach every target: 40 took 15.7 s of running
        # here against 4.4 s, with the same compiled loop (steps are an argument).
        "pgd": attacks.pgd(lite0.logits, lite0.params, eps=8 / 255, steps=10),
        # Suite time: 20 x 2 steps took 52 s of running here (L-BFGS 33 s on 4 pairs, C&W
        # 19 s on all 12). L-BFGS succeeds on every pair in its first round of c (a second
        # round only tries a larger c); C&W keeps two rounds, so its search over c still
        # runs on the real model.
        "lbfgs": attacks.lbfgs(lite0.logits, lite0.params, steps=10, search_steps=1),
        "cw": attacks.cw(lite0.logits, lite0.params, steps=10, search_steps=2),
    }
    out = {}
    for name, run in methods.items():
        idx = jnp.arange(len(originals)) if name == "pgd" else jnp.asarray(MINIMAL_PAIRS)
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
    pgd = [outcomes["pgd"][i] for i in MINIMAL_PAIRS]
    assert len(outcomes[method]) == len(pgd)
    pgd_median = np.median([l2 for _, l2, _ in pgd])  # the same pairs
    assert median < pgd_median, (method, median, pgd_median)
