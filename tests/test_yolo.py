"""Darknet YOLO port: equivalence with OpenCV's Darknet importer, errors, jit, real cfgs.

The goldens (``make reference-yolo``, tests/reference/make_yolo_goldens.py) come from
OpenCV 4.x running two tiny random-weight networks that use every supported layer type.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fooltools import rng
from fooltools.detection import darknet, yolo
from fooltools.errors import ModelError

DATA = Path(__file__).parent / "data" / "yolo"
GOLDEN = Path(__file__).parent / "golden"
CFG_DIR = Path(yolo.__file__).parent / "cfg"
NETS = ["tiny_v2", "tiny_v3"]
OPENCV_BN_EPS = 1e-6  # OpenCV's BatchNorm epsilon in its Darknet importer


def _load(name, **kw):
    return yolo.load_darknet(DATA / f"{name}.cfg", DATA / f"{name}.weights", **kw)


def _golden(name):
    g = np.load(GOLDEN / f"yolo_{name}.npz")
    return g, g["images"].astype(np.float32) / np.float32(255)


@pytest.mark.parametrize("name", NETS)
def test_raw_head_outputs_match_opencv(name):
    g, x = _golden(name)
    for eps, tol in [(OPENCV_BN_EPS, 1e-4), (darknet.BN_EPS, 1e-3)]:
        net = _load(name, bn_eps=eps)
        raw = jax.jit(net.apply)(net.params, x)
        assert len(raw) == len(net.heads) == (1 if name == "tiny_v2" else 2)
        for k, got in enumerate(raw):
            want = g[f"raw_{k}"]
            assert got.shape == want.shape
            assert np.abs(np.asarray(got) - want).max() <= tol, (name, eps, k)
            assert np.abs(want).max() > 0.5  # the comparison is not between near-zeros


@pytest.mark.parametrize("name", NETS)
def test_decoded_predictions_match_opencv_region_layer(name):
    """OpenCV rows are [cx, cy, w, h, objectness, objectness * class prob ...] per anchor.

    Class columns are zeroed below ``thresh`` (the test cfgs set 0) and, per class, for boxes
    its NMS suppresses. The ``[yolo]`` heads set ``nms_threshold=0`` so every entry compares;
    OpenCV's importer gives ``[region]`` no way to turn NMS off, so there the scores compare
    where OpenCV kept the box, and the suppressed ones must be real (positive) scores.
    """
    g, x = _golden(name)
    net = _load(name, bn_eps=OPENCV_BN_EPS)
    det = jax.jit(net.decode)(net.apply(net.params, x))
    b, start = x.shape[0], 0
    for k, head in enumerate(net.heads):
        want = g[f"det_{k}"].reshape(b, -1, 5 + head.classes)
        n = want.shape[1]
        box = np.asarray(det.boxes[:, start : start + n])
        cxcywh = np.concatenate(
            [(box[..., :2] + box[..., 2:]) / 2, box[..., 2:] - box[..., :2]], -1
        )
        np.testing.assert_allclose(cxcywh, want[..., :4], atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(det.objectness[:, start : start + n], want[..., 4], atol=1e-4)
        scores = np.asarray(det.scores[:, start : start + n])
        kept = want[..., 5:] > 0
        if head.kind == "yolo":
            assert kept.all()
        else:
            assert 0.3 < kept.mean() < 1.0  # NMS did suppress some, and many survive
            assert (scores[~kept] > 0).all()
        np.testing.assert_allclose(scores[kept], want[..., 5:][kept], atol=1e-4)
        probs = np.asarray(det.class_probs[:, start : start + n])
        if head.softmax:
            np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
        start += n
    assert det.boxes.shape[1] == start  # every anchor of every head, nothing else


def test_decode_scales_boxes_to_the_image():
    _, x = _golden("tiny_v3")
    net = _load("tiny_v3")
    raw = net.apply(net.params, x)
    rel, px = net.decode(raw), net.decode(raw, (480, 720))
    np.testing.assert_allclose(px.boxes, rel.boxes * np.array([720, 480, 720, 480]), rtol=1e-6)
    np.testing.assert_allclose(px.scores, rel.objectness[..., None] * rel.class_probs, rtol=1e-6)


def test_apply_jits_once_per_shape_and_differentiates():
    net = _load("tiny_v3")
    traces = []

    def f(p, x):
        traces.append(x.shape)
        return net.apply(p, x)

    jf = jax.jit(f)
    x = jnp.full((1, 32, 48, 3), 0.5)
    jf(net.params, x)
    jf(net.params, x + 0.1)
    assert len(traces) == 1
    jf(net.params, jnp.zeros((1, 64, 64, 3)))  # any multiple of the stride runs
    assert len(traces) == 2
    grad = jax.jit(jax.grad(lambda x: net.decode(net.apply(net.params, x)).scores.max()))(x)
    assert grad.shape == x.shape and float(jnp.abs(grad).max()) > 0


def test_detect_returns_fixed_size_nms_output():
    _, x = _golden("tiny_v3")
    net = _load("tiny_v3")
    out = jax.jit(lambda x: yolo.detect(net, x, score_threshold=0.1, max_outputs=20))(x)
    assert out.boxes.shape == (2, 20, 4) and out.valid.shape == (2, 20)
    for b in range(2):
        n = int(out.valid[b].sum())
        assert 0 < n and out.valid[b, :n].all()  # valid entries form a prefix
        s = np.asarray(out.scores[b, :n])
        assert (s > 0.1).all() and (np.diff(s) <= 0).all()
        boxes, labels = np.asarray(out.boxes[b, :n]), np.asarray(out.labels[b, :n])
        for i in range(n):  # no two kept boxes of one class overlap by more than 0.45
            for j in range(i):
                lo = np.maximum(boxes[i, :2], boxes[j, :2])
                hi = np.minimum(boxes[i, 2:], boxes[j, 2:])
                inter = np.prod(np.clip(hi - lo, 0, None))
                areas = np.prod(boxes[[i, j], 2:] - boxes[[i, j], :2], axis=-1)
                assert labels[i] != labels[j] or inter / (areas.sum() - inter) <= 0.45 + 1e-6


def test_input_sizes_that_do_not_fit_are_model_errors():
    net = _load("tiny_v2")
    with pytest.raises(
        ModelError, match=r"a 36x48 input does not fit tiny_v2\.cfg: layer 11 \(\[reorg\]"
    ):
        net.apply(net.params, jnp.zeros((1, 36, 48, 3)))


def test_weights_round_trip_through_save(tmp_path):
    cfg = darknet.parse_cfg(DATA / "tiny_v3.cfg")
    raw = darknet.read_weights(DATA / "tiny_v3.weights", cfg)
    out = yolo.save_darknet_weights(tmp_path / "raw.weights", raw, cfg, seen=12345)
    assert Path(out).read_bytes() == (DATA / "tiny_v3.weights").read_bytes()
    # Folded params written back in Darknet's format load to the same network.
    net = _load("tiny_v3")
    yolo.save_darknet_weights(tmp_path / "sub" / "folded.weights", net.params, DATA / "tiny_v3.cfg")
    again = yolo.load_darknet(DATA / "tiny_v3.cfg", tmp_path / "sub" / "folded.weights")
    x = jnp.full((1, 32, 48, 3), 0.3)
    for a, b in zip(net.apply(net.params, x), again.apply(again.params, x), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    with pytest.raises(ModelError, match=r"conv0\.weights .* needs \(8, 3, 3, 3\)"):
        bad = {**raw, "conv0": {**raw["conv0"], "weights": np.zeros((8, 4, 3, 3))}}
        yolo.save_darknet_weights(tmp_path / "bad.weights", bad, cfg)
    assert not (tmp_path / "bad.weights").exists()


@pytest.mark.parametrize(("cut", "found"), [(-4, -1), (+8, +2)])
def test_weights_of_the_wrong_size_say_expected_and_found(tmp_path, cut, found):
    data = (DATA / "tiny_v2.weights").read_bytes()  # old header: 16 bytes
    expected = (len(data) - 16) // 4
    path = tmp_path / "w.weights"
    path.write_bytes(data[:cut] if cut < 0 else data + bytes(cut))
    with pytest.raises(ModelError) as err:
        _ = yolo.load_darknet(DATA / "tiny_v2.cfg", path)
    msg = str(err.value)
    assert f"expected {expected} float values" in msg
    assert f"found {expected + found}" in msg and "\n" not in msg


def test_weights_far_too_large_are_refused_before_reading(tmp_path):
    # The whole file was read before its size was checked: a (sparse) 1 TiB file raised
    # MemoryError, and /dev/zero grew until the OOM killer came.
    path = tmp_path / "huge.weights"
    with open(path, "wb") as f:
        f.write((DATA / "tiny_v2.weights").read_bytes()[:16])
        f.truncate(2**40)
    with pytest.raises(ModelError, match=r"huge\.weights does not fit tiny_v2\.cfg: .*found"):
        yolo.load_darknet(DATA / "tiny_v2.cfg", path)
    with pytest.raises(ModelError, match=r"cannot read Darknet weights /dev/zero: not a regular"):
        darknet.read_weights("/dev/zero", darknet.parse_cfg(DATA / "tiny_v2.cfg"))


@pytest.mark.parametrize("name", ["zipfmt.pth", "legacy.pth"])
def test_a_pytorch_checkpoint_given_as_darknet_weights_is_named(name):
    # Its first bytes read as a Darknet header said "transposed Darknet weights (version
    # 67324752.20) are unsupported".
    path = DATA.parent / "checkpoints" / name
    with pytest.raises(ModelError, match=rf"^{name} is a PyTorch checkpoint, not Darknet weights"):
        darknet.read_weights(path, darknet.parse_cfg(DATA / "tiny_v2.cfg"))


def test_an_image_or_other_file_given_as_darknet_weights_says_so(tmp_path):
    # A PNG read as Darknet's header said "transposed Darknet weights (version
    # 1196314761.169478669) are unsupported".
    from fooltools import io

    cfg = darknet.parse_cfg(DATA / "tiny_v2.cfg")
    png = io.write_png(tmp_path / "small.png", np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ModelError, match=r"^small\.png is a PNG image, not Darknet weights$"):
        darknet.read_weights(png, cfg)
    other = tmp_path / "notes.weights"
    other.write_bytes(b"these are not weights at all, only some text")
    with pytest.raises(ModelError, match=r"^notes\.weights is not Darknet weights we read: its h"):
        darknet.read_weights(other, cfg)


def test_a_cfg_or_weights_that_is_not_a_regular_file_is_refused(fifo):
    # `--cfg /dev/zero` was read until the OOM killer came; a FIFO blocked forever.
    with pytest.raises(ModelError, match=r"cannot read Darknet cfg /dev/zero: not a regular file"):
        darknet.parse_cfg("/dev/zero")
    with pytest.raises(ModelError, match=r"cannot read Darknet cfg .*fifo: not a regular file"):
        darknet.parse_cfg(fifo.path)
    with pytest.raises(ModelError, match=r"cannot read Darknet weights .*fifo: not a regular"):
        darknet.read_weights(fifo.path, darknet.parse_cfg(DATA / "tiny_v2.cfg"))
    assert not fifo.blocked.is_set()


@pytest.mark.parametrize("which", ["cfg", "weights"])
def test_missing_file_is_a_one_line_model_error(tmp_path, which):
    cfg = tmp_path / "nope.cfg" if which == "cfg" else DATA / "tiny_v2.cfg"
    with pytest.raises(ModelError, match=r"cannot read Darknet .*nope") as err:
        yolo.load_darknet(cfg, tmp_path / "nope.weights")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        # {0} is the line of the appended section's header.
        ("[crop]\ncrop_height=8\n", r"bad\.cfg line {0}: unsupported layer \[crop\]"),
        ("[convolutional]\nfilters=4\ngroups=2\n", r"line {2}: \[convolutional\] unsupported"),
        ("[shortcut]\nfrom=-1\nalpha=0.5\n", r"line {2}: \[shortcut\] unsupported option alpha"),
        ("[route]\nlayers=-2,99\n", r"line {1}: \[route\] layers refers to layer 99"),
        ("[convolutional]\nactivation=selu\n", r"line {1}: .*unsupported activation=selu"),
        # A traceback (ZeroDivisionError), not this line.
        ("[maxpool]\nstride=0\nsize=2\n", r"line {0}: \[maxpool\] size=2 stride=0 does not"),
    ],
)
def test_unsupported_cfg_contents_name_the_section_and_line(tmp_path, patch, message):
    text = (DATA / "tiny_v2.cfg").read_text()
    header = text.count("\n") + 2  # after one blank line
    (tmp_path / "bad.cfg").write_text(text + "\n" + patch)
    with pytest.raises(ModelError, match=message.format(header, header + 1, header + 2)):
        yolo.load_darknet(tmp_path / "bad.cfg")


def test_a_network_that_is_not_rgb_is_refused_on_loading(tmp_path):
    # A grey Darknet net (channels=1) loaded, then failed on the RGB image in a traceback.
    text = (DATA / "tiny_v2.cfg").read_text().replace("channels=3", "channels=1")
    (tmp_path / "grey.cfg").write_text(text)
    with pytest.raises(ModelError, match=r"grey\.cfg: \[net\] channels=1 is unsupported"):
        yolo.load_darknet(tmp_path / "grey.cfg")


def test_head_channels_must_fit_anchors_and_classes():
    text = (DATA / "tiny_v2.cfg").read_text().replace("filters=27", "filters=26")
    with pytest.raises(ModelError, match=r"expects 27 input channels .* gives 26"):
        darknet.parse_cfg_text(text, name="t.cfg")


def test_reorg_and_maxpool_follow_darknet_index_maths():
    # Darknet's reorg, written out as its reorg_cpu loop (forward=0) on a tiny tensor.
    b, h, w, c, s = 1, 4, 6, 8, 2
    x = np.arange(b * h * w * c, dtype=np.float32).reshape(b, h, w, c)
    flat_in = x.transpose(0, 3, 1, 2).ravel()
    out = np.empty_like(flat_in)
    oc = c // (s * s)
    for k in range(c):
        for j in range(h):
            for i in range(w):
                off = k // oc
                src = (i * s + off % s) + w * s * ((j * s + off // s) + h * s * (k % oc))
                out[i + w * (j + h * k)] = flat_in[src]
    want = out.reshape(b, c * s * s, h // s, w // s).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(yolo._reorg(jnp.asarray(x), s), want)
    # size 2 stride 1 keeps the size (pad 0 before, 1 after); odd sizes with stride 2 floor.
    m = jnp.arange(25.0).reshape(1, 5, 5, 1)
    np.testing.assert_array_equal(yolo._maxpool(m, 2, 1, 1)[0, :, :, 0][-1], [21, 22, 23, 24, 24])
    assert yolo._maxpool(m, 2, 2, 1).shape == (1, 3, 3, 1)


# Bundled cfg -> (input size, head shapes, float values in the published .weights: each
# equals that file's size in bytes less its 20-byte header, or 16 for yolov2-tiny-voc).
REAL = {
    "yolov3-tiny.cfg": (416, [(13, 13, 255), (26, 26, 255)], (35434956 - 20) // 4),
    "yolov3.cfg": (416, [(13, 13, 255), (26, 26, 255), (52, 52, 255)], (248007048 - 20) // 4),
    "yolov2-tiny-voc.cfg": (416, [(13, 13, 125)], (63471556 - 16) // 4),
    "yolov2-tiny.cfg": (416, [(13, 13, 425)], (44948600 - 20) // 4),
    "yolov2-voc.cfg": (416, [(13, 13, 125)], (202704264 - 20) // 4),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_bundled_real_cfgs_give_the_published_head_shapes(name):
    size, shapes, n_values = REAL[name]
    cfg = yolo.parse_cfg(CFG_DIR / name)
    assert (cfg.height, cfg.width) == (size, size)
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    out = jax.eval_shape(lambda k, x: yolo.apply(cfg, yolo.init_params(k, cfg), x),
                         jax.random.key(0), x)  # fmt: skip
    assert [o.shape[1:] for o in out] == shapes
    if n_values is not None:
        counts = darknet.raw_shapes(cfg).values()
        assert sum(int(np.prod(s)) for layer in counts for s in layer.values()) == n_values


ODD = """[net]
width=70
height=50
[convolutional]
filters=8
size=3
stride=2
pad=1
activation=leaky
[convolutional]
filters=8
size=3
stride=2
pad=1
activation=leaky
[convolutional]
filters=21
size=1
stride=1
activation=linear
[yolo]
mask=0,1,2
anchors=10,14, 23,27, 37,58
classes=2
num=3
"""


def test_yolo_boxes_are_sized_against_the_network_input_not_grid_times_stride(tmp_path):
    # A 70 x 50 cfg gives an 18 x 13 grid: anchors were divided by 18 x 3 and 13 x 3 (the
    # width's stride, rounded down), not by 70 and 50 as Darknet divides by net.w, net.h.
    (tmp_path / "odd.cfg").write_text(ODD)
    net = yolo.load_darknet(tmp_path / "odd.cfg")  # a random init: the maths is the point
    x = jax.jit(rng.uniform, static_argnums=1)(jax.random.key(1), (1, 50, 70, 3))
    (raw,) = net.apply(net.params, x)
    assert raw.shape[1:3] == (13, 18)
    t = np.asarray(raw).reshape(1, 13, 18, 3, 7)
    anchors = np.asarray([[10, 14], [23, 27], [37, 58]], np.float32)
    want_w = np.exp(t[..., 2]) * anchors[:, 0] / 70
    want_h = np.exp(t[..., 3]) * anchors[:, 1] / 50
    want_cx = (np.arange(18)[None, None, :, None] + 1 / (1 + np.exp(-t[..., 0]))) / 18
    boxes = np.asarray(net.decode([raw]).boxes).reshape(1, 13, 18, 3, 4)
    np.testing.assert_allclose(boxes[..., 2] - boxes[..., 0], want_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(boxes[..., 3] - boxes[..., 1], want_h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose((boxes[..., 0] + boxes[..., 2]) / 2, want_cx, rtol=1e-5, atol=1e-6)


def test_heads_with_different_classes_are_refused_naming_the_line():
    # Loaded, then a concatenate traceback at the first detection.
    second = ODD.split("[yolo]")[0] + (
        "[yolo]\nmask=0,1,2\nanchors=10,14, 23,27, 37,58\nclasses=2\nnum=3\n"
        "[route]\nlayers=-2\n[convolutional]\nfilters=24\nsize=1\nactivation=linear\n"
        "[yolo]\nmask=0,1,2\nanchors=10,14, 23,27, 37,58\nclasses=3\nnum=3\n"
    )
    line = second.splitlines().index("[yolo]", 25) + 1
    with pytest.raises(
        ModelError, match=rf"t\.cfg line {line}: \[yolo\] classes=3, where the head"
    ):
        darknet.parse_cfg_text(second, name="t.cfg")


def test_options_read_as_darknet_reads_them():
    cfg = darknet.parse_cfg_text(
        # Darknet keeps a key's first value; a conv without activation= is logistic there
        # (OpenCV's importer: linear), a shortcut's linear.
        ODD.replace("filters=8\n", "filters=8\nfilters=4\n", 1).replace(
            "activation=leaky\n", "", 1
        ),
        name="t.cfg",
    )
    assert cfg.layers[0].filters == 8 and cfg.layers[0].activation == "logistic"
    assert cfg.layers[1].activation == "leaky"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # Letterboxed input (AlexeyAB) is not what the images here get.
        (
            ("width=70\n", "width=70\nletter_box=1\n"),
            r"line 3: \[net\] letter_box=1 is unsupported",
        ),
        (("width=70\n", "width=70\n=1\n"), r"line 3: expected \[section\] or key=value, got '=1'"),
        (("mask=0,1,2\n", "mask=\n"), r"line 22: \[yolo\] mask= lists no anchors"),
    ],
)
def test_cfg_lines_darknet_would_misread_are_refused(change, message):
    with pytest.raises(ModelError, match=message):
        darknet.parse_cfg_text(ODD.replace(*change, 1), name="t.cfg")


def test_a_huge_cfg_or_line_is_refused_without_reading_or_quoting_it_whole(tmp_path):
    # A 1 GB sparse "cfg" was read whole (18 GB at its peak), a 30 GB one a MemoryError
    # traceback; a zero-filled cfg's one line was quoted whole: 32 MB of error "line".
    big = tmp_path / "big.cfg"
    with open(big, "wb") as f:
        f.truncate(darknet.MAX_CFG_BYTES + 1)
    with pytest.raises(ModelError, match=r"big\.cfg is over 1024 KiB: not a Darknet cfg"):
        darknet.parse_cfg(big)
    with pytest.raises(ModelError, match=r"line 2: expected .*, got '(x){60}'\.\.\.$"):
        darknet.parse_cfg_text("[net]\n" + "x" * 10**6, name="t.cfg")


def test_weights_holding_nan_are_refused(tmp_path):
    # Loaded, every score was NaN: "0 objects", exit 0.
    data = bytearray((DATA / "tiny_v2.weights").read_bytes())
    data[-4:] = np.float32(np.nan).tobytes()
    (tmp_path / "nan.weights").write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"nan\.weights holds NaN or infinite values"):
        yolo.load_darknet(DATA / "tiny_v2.cfg", tmp_path / "nan.weights")
