"""Attack properties on a tiny linear model (fast), plus the model-level contracts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fooltools import attacks, io, rng
from fooltools.attacks import base

H, W, K = 6, 5, 4


def linear_model(trace_log=None):
    w = jax.jit(rng.normal, static_argnums=1)(jax.random.key(1), (H * W * 3, K))
    b = jnp.zeros(K)

    def model(p, x):
        if trace_log is not None:
            trace_log.append(x.shape)
        return x.reshape(x.shape[0], -1) @ p["w"] + p["b"]

    return model, {"w": w, "b": b}


def images(n=3, seed=0):
    x = jax.jit(rng.uniform, static_argnums=1)(jax.random.key(seed), (n, H, W, 3))
    return io.quantize(x)


def targets_for(model, params, x):
    # A target different from the current class for every example.
    return (jnp.argmax(model(params, x), axis=-1) + 1) % K


ATTACKS = {
    "pgd-linf": lambda m, p, **kw: attacks.pgd(m, p, eps=8 / 255, steps=10, **kw),
    "pgd-l2": lambda m, p, **kw: attacks.pgd(m, p, eps=0.5, norm="l2", steps=10, **kw),
    "pgd-cosine": lambda m, p, **kw: attacks.pgd(m, p, eps=0.1, steps=5, schedule="cosine", **kw),
    "fgsm": lambda m, p, **kw: attacks.fgsm(m, p, eps=8 / 255, **kw),
    "szegedy": lambda m, p, **kw: attacks.szegedy(m, p, steps=20, optimizer=None, **kw),
    "lbfgs": lambda m, p, **kw: attacks.lbfgs(m, p, steps=5, search_steps=2, **kw),
    "cw": lambda m, p, **kw: attacks.cw(m, p, steps=20, search_steps=2, lr=0.05, **kw),
}


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("targeted", [True, False])
def test_outputs_valid_and_reported_metrics_true(name, targeted):
    model, params = linear_model()
    x0 = images()
    tgt = targets_for(model, params, x0) if targeted else jnp.argmax(model(params, x0), -1)
    res = ATTACKS[name](model, params, targeted=targeted)(jax.random.key(0), x0, tgt)
    x = np.asarray(res.x)
    assert x.shape == x0.shape and x.min() >= 0.0 and x.max() <= 1.0
    np.testing.assert_array_equal(x, np.asarray(io.quantize(res.x)))  # on the 8-bit grid
    # The reported logits, success and distortions describe the returned images.
    np.testing.assert_allclose(res.logits, model(params, res.x), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(res.success, base.criterion(res.logits, tgt, targeted))
    d = (x - np.asarray(x0)).reshape(len(x), -1)
    np.testing.assert_allclose(res.linf, np.abs(d).max(1), atol=1e-6)
    np.testing.assert_allclose(res.l2, np.sqrt((d**2).sum(1)), atol=1e-5)
    np.testing.assert_array_equal(res.l0, (np.abs(d) > 0.5 / 255).sum(1))


# One model for every example: PGD's compiled loop is kept per model and settings, and
# the budget is its argument, so the examples run 4 programs (norm x quantize), not one
# each.
BUDGET_MODEL, BUDGET_PARAMS = linear_model()


@settings(max_examples=12, deadline=None)
@given(
    eps_steps=st.integers(1, 40),
    norm=st.sampled_from(["linf", "l2"]),
    steps=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
    quantize=st.booleans(),
)
def test_pgd_distortion_within_budget(eps_steps, norm, steps, seed, quantize):
    model, params = BUDGET_MODEL, BUDGET_PARAMS
    x0 = images(seed=seed % 97)
    eps = eps_steps / 255 if norm == "linf" else eps_steps / 40
    run = attacks.pgd(model, params, eps=eps, norm=norm, steps=steps, quantize=quantize)
    res = run(jax.random.key(seed), x0, targets_for(model, params, x0))
    budget = res.linf if norm == "linf" else res.l2
    assert np.all(np.asarray(budget) <= eps + 1e-5)
    assert float(res.x.min()) >= 0.0 and float(res.x.max()) <= 1.0


def test_pgd_random_start_covers_what_the_model_sees_whatever_its_logits_sum_to():
    # The start's noise went where grad(sum(logits)) != 0: for logits (z, -z) (or centred
    # ones, or probabilities) that is nowhere, and the random start was silently off.
    w = jax.jit(rng.normal, static_argnums=1)(jax.random.key(1), (H * (W - 2) * 3,))

    def model(p, x):  # the last two columns are never seen, as a centre crop's margin
        z = x[:, :, : W - 2].reshape(len(x), -1) @ p
        return jnp.stack([z, -z], -1)

    x0 = images(2)
    run = attacks.pgd(model, w, eps=8 / 255, steps=1, step_size=1e-6, quantize=False)
    moved = np.abs(np.asarray(run(jax.random.key(0), x0, jnp.array([0, 1])).x - x0))
    assert moved[:, :, : W - 2].max() > 7 / 255  # a start of up to 8/255 where it sees
    assert moved[:, :, W - 2 :].max() == 0  # and none where it does not


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_another_budget_runs_the_compiled_attack_and_honours_its_numbers(schedule):
    # A grid over eps, step size or steps (fool run) compiled one attack per point.
    log = []
    model, params = linear_model(log)
    x0 = images()
    tgt = targets_for(model, params, x0)

    def attack(**budget):
        run = attacks.pgd(model, params, schedule=schedule, random_start=False, **budget)
        return run(jax.random.key(0), x0, tgt)

    small = attack(eps=2 / 255, steps=3)
    traced = len(log)
    large = attack(eps=40 / 255, steps=4, step_size=20 / 255)
    one = attack(eps=40 / 255, steps=1, step_size=20 / 255)
    assert traced > 0 and len(log) == traced
    # Each took its own numbers: the budget bounds the small one, and the large one's first
    # step moves every changed pixel 20 levels (a sign step of 20/255, snapped).
    assert np.all(np.asarray(small.linf) <= 2 / 255 + 1e-6)
    assert np.asarray(large.linf).max() > 2 / 255 + 1e-6
    x1 = np.asarray(one.x)
    levels = np.rint(np.abs(x1 - np.asarray(x0)) * 255)
    assert np.all((levels == 20) | (x1 == 0) | (x1 == 1))  # or stopped by the box
    assert np.mean(levels == 20) > 0.5


@pytest.mark.parametrize("name", ["pgd-linf", "cw", "lbfgs"])
def test_a_model_that_cannot_be_hashed_is_attacked_all_the_same(name):
    # The jitted pieces are kept per model (base.kept): a callable object defining __eq__
    # (and so no __hash__) cannot be a key, and is built afresh instead of a TypeError.
    model, params = linear_model()

    class Model:
        def __eq__(self, other):
            return isinstance(other, Model)

        def __call__(self, p, x):
            return model(p, x)

    x0 = images()
    tgt = targets_for(model, params, x0)
    ours = ATTACKS[name](Model(), params)(jax.random.key(0), x0, tgt)
    plain = ATTACKS[name](model, params)(jax.random.key(0), x0, tgt)
    np.testing.assert_array_equal(ours.x, plain.x)


def test_minimal_attacks_take_their_numbers_as_arguments_and_honour_them():
    # As PGD's budget: C&W's c, kappa, rate and steps per round, and L-BFGS's c and steps
    # per round, were constants of the compiled loop (a grid over them, or another
    # --steps, compiled the attack again); each build must still run on its own numbers.
    log = []
    model, params = linear_model(log)
    x0 = images()
    tgt = targets_for(model, params, x0)

    def cw(**kw):
        return attacks.cw(model, params, search_steps=1, **kw)(jax.random.key(0), x0, tgt)

    def lbfgs(**kw):
        return attacks.lbfgs(model, params, search_steps=1, **kw)(jax.random.key(0), x0, tgt)

    first = [cw(steps=20, lr=0.05), lbfgs(steps=5)]
    traced = len(log)
    confident = cw(steps=30, lr=0.05, c=10.0, kappa=5.0)
    still = cw(steps=10, lr=1e-7)  # moves no pixel a whole level
    penalised = lbfgs(steps=4, c=1e6)  # the distance term outweighs the class
    assert traced > 0 and len(log) == traced
    assert all(np.asarray(r.success).all() for r in first)
    ok = np.asarray(confident.success)
    logits, t = np.asarray(confident.logits)[ok], np.asarray(tgt)[ok]
    others = np.where(np.eye(K, dtype=bool)[t], -np.inf, logits).max(axis=1)
    assert ok.any() and (logits[np.arange(len(t)), t] - others >= 5 - 1e-4).all()
    assert not np.asarray(still.success).any() and not np.asarray(penalised.success).any()


@pytest.mark.parametrize("name", ["pgd-linf", "pgd-l2"])
def test_same_seed_same_bytes_other_seed_differs(name):
    model, params = linear_model()
    x0 = images()
    tgt = targets_for(model, params, x0)
    run = ATTACKS[name](model, params)
    a = np.asarray(run(jax.random.key(7), x0, tgt).x)
    b = np.asarray(run(jax.random.key(7), x0, tgt).x)
    c = np.asarray(run(jax.random.key(8), x0, tgt).x)
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


@pytest.mark.parametrize("name", ["pgd-linf", "cw", "szegedy"])
def test_jitted_and_unjitted_agree(name):
    model, params = linear_model()
    x0 = images()
    tgt = targets_for(model, params, x0)
    jitted = ATTACKS[name](model, params)(jax.random.key(3), x0, tgt)
    with jax.disable_jit():
        eager = ATTACKS[name](model, params)(jax.random.key(3), x0, tgt)
    np.testing.assert_allclose(jitted.x, eager.x, atol=1.5 / 255)
    np.testing.assert_array_equal(jitted.success, eager.success)


@pytest.mark.parametrize("name", ["pgd-linf", "cw", "lbfgs", "szegedy"])
def test_second_call_does_not_recompile(name):
    log = []
    model, params = linear_model(log)
    x0 = images()
    tgt = targets_for(model, params, x0)
    run = ATTACKS[name](model, params)
    run(jax.random.key(0), x0, tgt)
    traced = len(log)
    run(jax.random.key(1), images(seed=5), tgt)
    # A progress bar runs the same loop in several calls, each fed the last one's carry.
    run(jax.random.key(2), x0, tgt, progress=lambda i: None)
    assert len(log) == traced  # same shapes: no retrace, hence no recompilation


@pytest.mark.parametrize("name", ["pgd-linf", "cw", "lbfgs", "szegedy"])
def test_a_progress_bar_changes_no_byte_and_sees_the_last_step(name):
    # With progress the loop runs as a series of device calls (the host reports between
    # them): the same compiled loop, so the same bytes as one call.
    model, params = linear_model()
    x0 = images()
    tgt = targets_for(model, params, x0)
    run = ATTACKS[name](model, params)
    seen = []
    quiet = run(jax.random.key(3), x0, tgt)
    watched = run(jax.random.key(3), x0, tgt, progress=seen.append)
    for a, b in zip(quiet, watched, strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    total = {"pgd-linf": 10, "cw": 40, "lbfgs": 10, "szegedy": 20}[name]
    assert seen == sorted(set(seen)) and seen[-1] == total - 1
    assert all(isinstance(s, int) for s in seen)


def test_progress_is_reported_after_the_step_has_run():
    # A progress bar must not run ahead of the device: each report comes once the
    # steps it counts have finished (device calls return before they have run).
    model, params = linear_model()
    x0 = images()
    log = []

    def logged_model(p, x):
        jax.debug.callback(lambda: log.append("step"))
        return model(p, x)

    run = attacks.pgd(logged_model, params, eps=0.1, steps=6)
    run(jax.random.key(0), x0, targets_for(model, params, x0), progress=lambda i: log.append(i))
    jax.effects_barrier()
    # Model calls: 2 before the loop (the visible pixels, the start's logits), 1 per step.
    reports = [k for k, e in enumerate(log) if e != "step"]
    assert log[reports[-1]] == 5
    for k in reports:
        assert log[:k].count("step") >= 2 + log[k] + 1


def test_snap_rounds_towards_original_and_is_straight_through():
    x0 = io.quantize(jnp.full((1, 2, 2, 3), 0.5))
    x = x0 + jnp.array([3.7, -3.7, 0.4, 8.0]).reshape(1, 2, 2, 1) / 255
    snapped = base.snap(x0, x)
    steps = np.round((np.asarray(snapped) - np.asarray(x0)) * 255)[0, :, :, 0].ravel()
    np.testing.assert_array_equal(steps, [3, -3, 0, 8])
    g = jax.grad(lambda x: base.snap(x0, x).sum())(x)
    np.testing.assert_array_equal(g, jnp.ones_like(x))


@pytest.mark.parametrize(
    "make",
    [
        lambda m, p: attacks.pgd(m, p, eps=0),
        # Under one 8-bit level: snapped to the grid, the input came back unchanged.
        lambda m, p: attacks.pgd(m, p, eps=0.5 / 255),
        lambda m, p: attacks.fgsm(m, p, eps=0.003, norm="l2"),
        lambda m, p: attacks.pgd(m, p, eps=float("inf"), norm="l2"),
        lambda m, p: attacks.pgd(m, p, eps=1e30, norm="l2"),
        lambda m, p: attacks.pgd(m, p, eps=0.1, step_size=float("inf")),
        lambda m, p: attacks.fgsm(m, p, eps=float("inf"), norm="l2"),
        lambda m, p: attacks.pgd(m, p, eps=0.1, steps=0),
        lambda m, p: attacks.pgd(m, p, eps=0.1, norm="l1"),
        lambda m, p: attacks.cw(m, p, steps=0),
        lambda m, p: attacks.pgd(m, p, eps=0.1, steps=2**31),  # int32 loop counter
        lambda m, p: attacks.cw(m, p, steps=2**30),  # 5 rounds of 2^30
        lambda m, p: attacks.lbfgs(m, p, c=0),
        lambda m, p: attacks.cw(m, p, lr=-0.01),  # ascended the objective
        lambda m, p: attacks.cw(m, p, lr=0.0),
        lambda m, p: attacks.cw(m, p, kappa=float("nan")),
        lambda m, p: attacks.cw(m, p, kappa=-1.0),
        # Infinite constants: the input back as a failure, or NaN images as a success.
        lambda m, p: attacks.cw(m, p, c=float("inf")),
        lambda m, p: attacks.lbfgs(m, p, c=float("inf")),
        lambda m, p: attacks.szegedy(m, p, lam=float("inf")),
        # 2.0 (from JSON or argparse) failed inside lax.fori_loop, a TypeError on types.
        lambda m, p: attacks.pgd(m, p, eps=0.1, steps=2.0),
        lambda m, p: attacks.cw(m, p, steps=2.0),
        lambda m, p: attacks.cw(m, p, search_steps=2.0),
        lambda m, p: attacks.lbfgs(m, p, steps=True),
        lambda m, p: attacks.szegedy(m, p, steps=2.0),
    ],
)
def test_invalid_configuration_raises(make):
    model, params = linear_model()
    with pytest.raises(ValueError):
        make(model, params)


@pytest.mark.parametrize("name", ["pgd-linf", "lbfgs"])
def test_8bit_images_are_refused_and_a_list_of_targets_accepted(name):
    # uint8 pixels taken as floats were 0..255, clipped to an all-white image: attacked
    # without a word. A list of classes was an AttributeError from inside jit.
    model, params = linear_model()
    run = ATTACKS[name](model, params)
    x = images()  # the batch of the other tests: their compiled attack (any batch would do)
    t = targets_for(model, params, x)
    with pytest.raises(ValueError, match="integer dtype uint8"):
        run(jax.random.key(0), io.to_uint8(x), t)
    listed = run(jax.random.key(0), x, [int(c) for c in t])
    np.testing.assert_array_equal(listed.x, run(jax.random.key(0), x, t).x)
    # The same mistake as floats (np.asarray(img, np.float32)), or normalised images.
    for scaled in (x * 255, (x - 0.5) / 0.5, x.at[0, 0, 0, 0].set(jnp.nan)):
        with pytest.raises(ValueError, match=r"expected images in \[0, 1\]"):
            run(jax.random.key(0), scaled, t)
    run(jax.random.key(0), x * 1.01, t)  # resampling overshoot is clipped, as before


@pytest.mark.parametrize("name", ["pgd-linf", "cw"])
def test_a_target_outside_the_logits_is_refused(name):
    # Class K of K (or -1) gathered out of range: the attack ran to the end and reported
    # a failure (or an untargeted success) against a class the model does not have.
    model, params = linear_model()
    run = ATTACKS[name](model, params)
    x = images()  # the batch of the other tests: their compiled start (any batch would do)
    for bad in (K, -1):
        with pytest.raises(ValueError, match=rf"0\.\.{K - 1}, got \[{bad}\]"):
            run(jax.random.key(0), x, jnp.asarray([0, 1, bad]))
    # Cast to int32, [2.9, 3.5] attacked classes 2 and 3 and reported their success.
    with pytest.raises(ValueError, match="target must be integer class indices, got dtype f"):
        run(jax.random.key(0), x, jnp.asarray([0.0, 1.0, 2.9]))
    with pytest.raises(ValueError, match=r"x holds no images \(shape \(0, "):
        run(jax.random.key(0), x[:0], jnp.asarray([], jnp.int32))


@pytest.mark.parametrize("targeted", [True, False])
def test_cw_returns_examples_with_the_confidence_kappa(targeted):
    # The smallest-L2 iterate that merely reached top-1 was kept whatever kappa was (a
    # margin of 0.01 to 0.96 for kappa 2): kappa bought nothing but a larger perturbation.
    model, params = linear_model()
    x0 = images()
    tgt = targets_for(model, params, x0) if targeted else jnp.argmax(model(params, x0), -1)
    kappa = 2.0
    run = attacks.cw(model, params, kappa=kappa, steps=100, search_steps=5, lr=0.05,
                     targeted=targeted)  # fmt: skip
    res = run(jax.random.key(0), x0, tgt)
    assert bool(jnp.all(res.success))
    lead = -base.margin(model(params, res.x), tgt, targeted, kappa=1e9)
    assert bool(jnp.all(lead >= kappa)), lead


@pytest.mark.parametrize("targeted", [True, False])
def test_cw_is_no_success_where_no_iterate_reached_kappa(targeted):
    # An input already of the target class (targeted) or already off its label
    # (untargeted), returned unchanged when no iterate led by kappa, was reported a success.
    model, params = linear_model()
    x0 = images()
    top = jnp.argmax(model(params, x0), -1)
    label = top if targeted else (top + 1) % K
    lead = -base.margin(model(params, x0), label, targeted, kappa=1e9)
    assert bool(jnp.all(lead > 0))  # already fooled at the start
    for kappa, fooled in ((0.0, True), (float(lead.max()) + 100.0, False)):
        run = attacks.cw(model, params, kappa=kappa, steps=3, search_steps=1, lr=1e-4,
                         targeted=targeted)  # fmt: skip
        res = run(jax.random.key(0), x0, label)
        assert res.success.tolist() == [fooled] * len(x0), (kappa, res.success)
