"""fooltools.visualize on the real EfficientNet-Lite0: the acceptance checks of issue #7.

Small images and few compiles keep this fast: inversion runs at 64 px (the network runs
at the working image's own size) with the two deepest layers in one batch, class
visualisation at 112 px (upsampled to 224 by the classifier's preprocessing), style at
64 px. The CLI tests (test_cli_visualize.py) reuse these compiled loops.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fooltools import io, rng
from fooltools.errors import ImageError
from fooltools.visualize import classviz, common, engine, inversion, layers, priors, run, style

# --- priors against direct float64 computations ---------------------------------------


def _tv_direct(x: np.ndarray, beta: float, eps: float) -> np.ndarray:
    """R_TV^beta written out pixel by pixel, last row/column replicated (float64)."""
    n, h, w, c = x.shape
    out = np.zeros(n)
    for b in range(n):
        for i in range(h):
            for j in range(w):
                for k in range(c):
                    dx = (x[b, i, j + 1, k] if j + 1 < w else x[b, i, j, k]) - x[b, i, j, k]
                    dy = (x[b, i + 1, j, k] if i + 1 < h else x[b, i, j, k]) - x[b, i, j, k]
                    s = dx * dx + dy * dy
                    out[b] += s if beta == 2 else (s + eps) ** (beta / 2)
    return out


def _central_differences(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += h
        down[idx] -= h
        grad[idx] = (f(up).sum() - f(down).sum()) / (2 * h)
    return grad


@pytest.mark.parametrize("beta", [2.0, 1.0, 1.5])
def test_total_variation_value_and_gradient_match_finite_differences(beta):
    x = np.random.default_rng(0).uniform(size=(2, 4, 5, 3))
    eps = priors.TV_EPS

    value = np.asarray(priors.total_variation(jnp.asarray(x, jnp.float32), beta))
    np.testing.assert_allclose(value, _tv_direct(x, beta, eps), rtol=1e-5)

    grad = np.asarray(
        jax.grad(lambda v: jnp.sum(priors.total_variation(v, beta)))(jnp.asarray(x, jnp.float32))
    )
    reference = _central_differences(lambda v: _tv_direct(v, beta, eps), x)
    np.testing.assert_allclose(grad, reference, rtol=2e-4, atol=2e-5)


def test_l_alpha_value_and_gradient_match_finite_differences():
    x = np.random.default_rng(1).uniform(size=(2, 3, 3, 3))

    def direct(v):
        return np.sum(np.abs(v - 0.5) ** 6, axis=(1, 2, 3))

    value = np.asarray(priors.l_alpha(jnp.asarray(x, jnp.float32), 6.0))
    np.testing.assert_allclose(value, direct(x), rtol=1e-5)
    grad = jax.grad(lambda v: jnp.sum(priors.l_alpha(v, 6.0)))(jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(grad, _central_differences(direct, x), rtol=1e-4, atol=1e-7)


def test_jitter_rolls_the_whole_batch_reproducibly():
    x = jnp.arange(2 * 6 * 6 * 3, dtype=jnp.float32).reshape(2, 6, 6, 3)
    a, b = priors.jitter(jax.random.key(3), x, 2), priors.jitter(jax.random.key(3), x, 2)
    np.testing.assert_array_equal(a, b)
    shifts = [
        (dy, dx)
        for dy in range(-2, 3)
        for dx in range(-2, 3)
        if np.array_equal(a, np.roll(x, (dy, dx), axis=(1, 2)))
    ]
    assert len(shifts) == 1
    assert priors.jitter(jax.random.key(3), x, 0) is x


@pytest.mark.parametrize("jitter", [33, 3_000_000_000])
def test_library_refuses_a_jitter_beyond_the_image_side(lite0, jitter):
    # A roll past the side does nothing more, and 3e9 overflowed the int32 random draw.
    from fooltools.visualize import deepdream

    with pytest.raises(ValueError, match="jitter must be 0 to the image side, 32 pixels"):
        classviz.visualize(jax.random.key(0), lite0, [15], size=32, steps=1, jitter=jitter)
    photo = np.full((32, 24, 3), 0.5, np.float32)
    with pytest.raises(ValueError, match="jitter must be 0 to the image side, 32 pixels"):
        deepdream.dream(jax.random.key(0), lite0, photo, layer="head", octaves=1, steps=1,
                        jitter=jitter)  # fmt: skip


def test_engine_minimises_a_quadratic_in_the_box_with_snapshots():
    target = jnp.full((1, 4, 4, 3), 0.25)

    def loss(params, x, aux):
        return jnp.sum((x - aux) ** 2, axis=(1, 2, 3)) * params

    opt = engine.input_optimizer(loss, jnp.float32(1.0))
    x0 = jnp.full((2, 4, 4, 3), 0.9)
    trace = opt.run(
        jax.random.key(0), x0, jnp.concatenate([target, target - 1.0]), steps=300, lr=0.02
    )
    np.testing.assert_allclose(trace.x[0], io.quantize(target[0]), atol=1 / 255)
    assert trace.x[1].max() == 0.0  # the target below 0 ends on the box, not beyond
    assert trace.frame_steps == (0, 38, 76, 114, 152, 190, 228, 266, 300)
    assert trace.frames.shape == (len(trace.frame_steps), 2, 4, 4, 3)
    np.testing.assert_array_equal(io.quantize(trace.x), trace.x)  # on the 8-bit grid
    # Steps, learning rate, snapshot period, schedule and aux are traced: no recompilation.
    again = opt.run(
        jax.random.key(1),
        x0,
        jnp.zeros((2, 4, 4, 3)),
        steps=7,
        lr=0.1,
        every=2,
        schedule="constant",
    )
    assert again.frame_steps == (0, 2, 4, 6, 7)
    assert opt.segment._cache_size() == 1


def test_the_loop_makes_its_segment_ends_one_at_a_time():
    # Each snapshot step, at most CHUNK apart, then the last: as the set they were made in.
    chunk = engine.CHUNK
    for steps, every in [(1, 1), (7, 2), (100, 30), (101, 25), (300, 38), (60, 7)]:
        want = sorted({*range(every, steps, every), *range(chunk, steps, chunk), steps})
        assert list(engine._segment_ends(steps, every)) == want
    # The largest --steps: made in full first, 86 million ends (gigabytes) before step 1.
    ends = engine._segment_ends(2**31 - 1, 2**28)
    assert [next(ends) for _ in range(3)] == [chunk, 2 * chunk, 3 * chunk]


# --- layers --------------------------------------------------------------------------


def test_layers_are_named_in_network_order_with_shapes(lite0):
    shapes = layers.layer_shapes(lite0)
    names = list(shapes)
    assert names[0] == "stem" and names[-3:] == ["head", "pool", "logits"]
    assert shapes["stem"] == (112, 112, 32) and shapes["head"] == (7, 7, 1280)
    assert shapes["logits"] == (1000,)
    assert layers.layer_shapes(lite0, (64, 64))["head"] == (2, 2, 1280)
    assert layers.default_style_layers(lite0) == ("stem", "block1", "block3", "block5", "block11")
    assert layers.default_content_layer(lite0) == "block6"


# --- inversion -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def inverted(lite0):
    # The two deepest layers `fool layers` lists, one random start each, in one batch.
    deepest = list(layers.layer_shapes(lite0))[-2:]
    cat = io.read_image(io.sample_path("cat"))
    return inversion.invert(
        jax.random.key(0),
        lite0,
        cat,
        layer=deepest,
        starts=1,
        steps=1500,
        size=64,
        tv_weight=3e-3,
    )


def test_inversion_at_the_two_deepest_layers_is_within_5_percent_of_random(inverted):
    assert [inv.layer for inv in inverted] == ["pool", "logits"]
    for inv in inverted:
        assert inv.ratio.shape == (1,)
        assert inv.ratio[0] < 0.05, (inv.layer, inv.ratio)
        assert inv.random_distance[0] > 10 * inv.distance[0]


@pytest.mark.parametrize(
    "exponents", [{"beta": np.inf}, {"beta": 1000.0}, {"alpha": np.inf}, {"alpha": 200.0}]
)
def test_inversion_refuses_exponents_that_overflow_float32(lite0, exponents):
    # Each of these ran, and ended in NaN images.
    cat = io.read_image(io.sample_path("cat"))
    with pytest.raises(ValueError, match=r"beta, alpha in \[1, 100\]"):
        inversion.invert(jax.random.key(0), lite0, cat, layer="pool", steps=1, starts=1,
                         size=16, **exponents)  # fmt: skip


def test_inversion_is_not_the_photo_itself(inverted, lite0):
    # Same features, different pixels: the photo is an exact solution, the reconstructions
    # from random starts are other ones (the reconstruction is not unique).
    for inv in inverted:
        rms = np.sqrt(np.mean((inv.trace.x[0] - inv.original) ** 2))
        assert rms > 0.1, (inv.layer, rms)
    # What is reported is measured on the 8-bit images.
    maps = common.feature_fn(lite0, True)(lite0.params, inverted[0].original[None])
    assert np.array_equal(io.quantize(inverted[0].trace.x), inverted[0].trace.x)
    assert inverted[0].distance[0] == pytest.approx(
        float(
            np.linalg.norm(
                common.feature_fn(lite0, True)(lite0.params, inverted[0].trace.x)["pool"]
                - maps["pool"]
            )
        ),
        rel=1e-4,
    )


# --- class visualisation ---------------------------------------------------------------


def test_class_visualisation_reaches_90_percent_on_two_classes(lite0, tmp_path):
    targets = [lite0.labels.lookup("robin"), lite0.labels.lookup("ostrich")]
    viz = classviz.visualize(jax.random.key(0), lite0, targets, steps=60, size=112)
    report = run.write_classviz(tmp_path, lite0, viz, settings={})
    # Judge the files: read the PNGs back and classify them the way the model does.
    files = [tmp_path / panel["file"] for panel in report["images"][:2]]
    images = np.stack([io.read_image(f) for f in files])
    logits = common.feature_fn(lite0, False)(lite0.params, images)["logits"]
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    for n, t in enumerate(targets):
        assert probs[n].argmax() == t
        assert probs[n, t] >= 0.9, (lite0.labels.name(t), probs[n, t])
        assert report["confidence"][n] == pytest.approx(float(probs[n, t]), abs=1e-5)
    assert report["success"] is True


# --- style ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stylized(lite0):
    cat = io.read_image(io.sample_path("cat"))
    coffee = io.read_image(io.sample_path("coffee"))
    return style.stylize(jax.random.key(0), lite0, cat, coffee, size=64, steps=300)


def test_style_loss_of_the_result_is_below_10_percent_of_the_content_photos(stylized):
    assert stylized.content.shape[:2] == stylized.style.shape[:2] == stylized.trace.x.shape[1:3]
    assert max(stylized.content.shape[:2]) == 64
    assert stylized.style_loss < 0.1 * stylized.content_style_loss, (
        stylized.style_loss,
        stylized.content_style_loss,
    )
    # ... while keeping some of the content (a pure texture would be far from it).
    assert stylized.content_loss < 1.0


def test_a_style_image_far_more_elongated_than_the_content_is_refused():
    # It was resized to cover the content before the centre crop: a 1 x 20000 strip for
    # a 512 x 512 content asked for a 512 x 10,240,000 image (63 GB of float32).
    strip = np.full((1, 33, 3), 0.5, np.float32)
    with pytest.raises(ImageError, match=r"33x1 pixels is 33 times as elongated as the 1x1"):
        style.match_size(strip, (1, 1))
    with pytest.raises(ImageError, match="crop it nearer to the content's shape"):
        style.match_size(strip.transpose(1, 0, 2), (1, 1))
    # Up to io.MAX_ASPECT (32) it is resized and cropped as before.
    ok = style.match_size(np.linspace(0, 1, 64 * 3, dtype=np.float32).reshape(2, 32, 3), (4, 2))
    assert ok.shape == (4, 2, 3) and 0 <= ok.min() <= ok.max() <= 1


def test_gram_matrix_is_position_free(lite0):
    f = jax.jit(rng.normal, static_argnums=1)(jax.random.key(0), (1, 4, 5, 6))
    shuffled = f.reshape(1, 20, 6)[:, ::-1].reshape(1, 4, 5, 6)
    np.testing.assert_allclose(style.gram(f), style.gram(shuffled), rtol=1e-5)
    assert style.gram(f).shape == (1, 6, 6)


def test_class_targets_may_be_a_numpy_array(lite0):
    # `not targets` on an array of two was numpy's "truth value ... is ambiguous".
    with pytest.raises(ValueError, match=r"targets must be indices in \[0, 1000\)"):
        classviz.visualize(jax.random.key(0), lite0, np.array([1, 1000]), steps=1, size=16)


def test_style_layers_one_name_is_one_layer_and_none_given_is_refused(lite0):
    # "block1" was taken letter by letter (unknown layer 'b'); [] silently used the defaults
    # where the docstring promises a ValueError.
    cat = io.read_image(io.sample_path("cat"))
    with pytest.raises(ValueError, match="at least one style layer"):
        style.stylize(jax.random.key(0), lite0, cat, cat, style_layers=[], steps=1, size=16)
    # The layers are checked before the weights: a zero weight stops it there, cheaply.
    with pytest.raises(ValueError, match="content_weight"):
        style.stylize(jax.random.key(0), lite0, cat, cat, style_layers="block1", content_weight=0)


def test_a_repeated_style_layer_counts_once(lite0):
    # The style loss is the mean over the layers: "stem,stem" (or " stem" beside "stem",
    # the same layer) weighed stem twice, and the report listed it twice.
    # The default layers with stem repeated, the cat styled by itself at 32 px: once the
    # repeats are dropped this is the program test_cli_visualize.py's
    # test_style_of_a_photo_by_itself_reports_no_ratio compiles (stem alone at 16 px
    # compiled a loop of its own, ~8 s).
    cat = io.read_image(io.sample_path("cat"))
    defaults = layers.default_style_layers(lite0)
    assert defaults[0] == "stem"
    result = style.stylize(
        jax.random.key(0), lite0, cat, cat, style_layers=["stem", " stem", *defaults, "stem"],
        steps=1, size=32,
    )  # fmt: skip
    assert result.style_layers == defaults


def test_a_class_given_twice_keeps_both_confidences_in_the_metrics(lite0, tmp_path):
    # `--class robin --class 15`: the metrics had one "robin confidence", the second
    # image's, though the first image's was another number.
    x = np.full((2, 16, 16, 3), 128 / 255, np.float32)  # on the 8-bit grid, as saved
    probs = np.full((2, 1000), 0.5 / 999, np.float32)
    probs[:, 15] = [0.25, 0.75]
    trace = engine.Trace(x, x[None], (0,), np.zeros((1, 2), np.float32))
    viz = classviz.Visualization("logits", np.array([15, 15]), trace, probs, np.zeros(2))
    metrics = run.write_classviz(tmp_path, lite0, viz, settings={})["metrics"]
    assert metrics["robin #1 confidence"] == 0.25 and metrics["robin #2 confidence"] == 0.75
    assert "robin confidence" not in metrics


def test_8bit_photos_are_refused_not_clipped_to_white(lite0):
    # uint8 0..255 cast to float and clipped to [0, 1] was a white photo: inverted,
    # dreamt on or styled without a word.
    from fooltools.visualize import deepdream

    cat = io.read_image(io.sample_path("cat"))
    cat8 = io.to_uint8(cat)
    key = jax.random.key(0)
    calls = [
        lambda: inversion.invert(key, lite0, cat8, layer="pool", steps=1, starts=1, size=16),
        lambda: deepdream.dream(key, lite0, cat8, layer="head", octaves=1, steps=1),
        lambda: style.stylize(key, lite0, cat8, cat, steps=1, size=16),
        lambda: style.stylize(key, lite0, cat, cat8, steps=1, size=16),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="integer dtype uint8"):
            call()
    cat8 = cat * 255  # the same values as floats
    for call in calls:
        with pytest.raises(ValueError, match=r"expected images in \[0, 1\]"):
            call()
