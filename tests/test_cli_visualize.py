"""``fool invert / visualize / dream / style / layers`` end to end, and their bad inputs.

Sizes, layers and batch shapes match tests/test_visualize.py so that the compiled loops
are reused when both run in one process: a few steps each is enough to check the run
directories.
"""

import html
import json

import numpy as np
import pytest

from fooltools import cli, io
from fooltools.cli import main
from fooltools.cli_visualize import COMMANDS


def test_the_commands_are_registered():
    assert {c.name for c in COMMANDS} == {"invert", "visualize", "dream", "style", "layers"}
    assert all(cli.cli.commands[c.name] is c for c in COMMANDS)


def run(capsys, *args):
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def check_run(out, kind, n_images):
    """The run directory is a gallery page a reader can understand on its own."""
    report = json.loads((out / "report.json").read_text())
    assert report["kind"] == kind
    page = (out / "index.html").read_text()
    assert report["title"].split()[0] in page
    assert len(report["images"]) == n_images
    for panel in report["images"]:
        assert (out / panel["file"]).is_file()
        assert html.escape(panel["caption"]) in page
    assert any(p["file"] == "progress.png" for p in report["images"])
    assert "about" in report["metrics"] and len(report["metrics"]["about"]) > 100
    return report


# --- runs ----------------------------------------------------------------------------


def test_layers_lists_every_layer_with_its_shape(capsys):
    code, out, _ = run(capsys, "layers")
    assert code == 0
    rows = dict(line.split() for line in out.strip().splitlines()[1:])
    assert rows["stem"] == "112x112x32" and rows["head"] == "7x7x1280"
    assert list(rows)[-2:] == ["pool", "logits"] and rows["logits"] == "1000"
    code, out, _ = run(capsys, "layers", "--size", "64")
    assert "2x2x1280" in out


def test_invert_writes_a_run_and_is_reproducible(capsys, tmp_path):
    args = [
        "invert",
        "sample:cat",
        "--layer",
        "pool",
        "--layer",
        "logits",
        "--starts",
        "1",
        "--size",
        "64",
        "--steps",
        "12",
        "--seed",
        "1",
    ]
    code, out, err = run(capsys, *args, "--out", tmp_path / "a")
    assert code == 0, err
    assert out.startswith("pool: feature distance ")
    report = check_run(tmp_path / "a", "invert", 4)
    assert [entry["layer"] for entry in report["layers"]] == ["pool", "logits"]
    assert 0 < report["layers"][0]["ratio"][0] < 1
    assert report["settings"]["steps"] == 12 and report["frame_steps"][-1] == 12
    assert run(capsys, *args, "--out", tmp_path / "b")[0] == 0
    for name in ("reconstruction-pool-1.png", "reconstruction-logits-1.png", "progress.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_visualize_writes_a_run(capsys, tmp_path):
    code, out, err = run(
        capsys,
        "visualize",
        "--class",
        "robin",
        "--class",
        "ostrich",
        "--size",
        "112",
        "--steps",
        "3",
        "--out",
        tmp_path,
    )
    assert code == 0, err
    assert out.splitlines()[0].startswith("robin: ")
    report = check_run(tmp_path, "visualize", 3)
    assert report["names"] == ["robin", "ostrich"] and report["targets"] == [15, 9]
    assert len(report["images"][0]["top"]) == 5
    assert isinstance(report["success"], bool)


def test_dream_writes_a_run(capsys, tmp_path):
    code, out, err = run(
        capsys,
        "dream",
        "sample:cat",
        "--layer",
        "block10",
        "--size",
        "48",
        "--octaves",
        "2",
        "--steps",
        "4",
        "--out",
        tmp_path,
    )
    assert code == 0, err
    report = check_run(tmp_path, "dream", 3)
    assert report["energy"][1] > report["energy"][0]  # the layer's activations grew
    assert max(report["size"]) == 48


def test_style_writes_a_run(capsys, tmp_path):
    code, out, err = run(
        capsys,
        "style",
        "sample:cat",
        "sample:coffee",
        "--size",
        "64",
        "--steps",
        "3",
        "--out",
        tmp_path,
    )
    assert code == 0, err
    assert out.startswith("style loss ")
    report = check_run(tmp_path, "style", 4)
    assert report["content_layer"] == "block6" and report["style_layers"][0] == "stem"
    assert report["style_loss"] < report["content_style_loss"]
    assert "seed" not in report["settings"]  # it draws no random numbers


def test_style_refuses_a_seed_it_would_not_use(capsys, tmp_path):
    # The result starts from the content photo and nothing is random: a --seed was
    # accepted and recorded in report.json, yet every seed gave the same image.
    code, _, err = run(capsys, "style", "sample:cat", "sample:coffee", "--seed", "3",
                       "--out", tmp_path)  # fmt: skip
    assert_one_line_error(code, err, "fool style takes no --seed", "draws no random numbers")
    assert not tmp_path.joinpath("report.json").exists()
    code, out, _ = run(capsys, "style", "--help")
    options = [line.split()[0] for line in out.splitlines() if line.startswith("  -")]
    assert code == 0 and "--out" in options and "--seed" not in options


def test_style_of_a_photo_by_itself_reports_no_ratio(capsys, tmp_path):
    # At 32 pixels the style image is resized exactly as the content (at 64 it is cropped
    # from a wider resize), so the content photo's own style loss is 0 and a ratio to it
    # is undefined, not 1e10.
    args = ["style", "sample:cat", "sample:cat", "--size", "32", "--steps", "3"]
    code, out, err = run(capsys, *args, "--out", tmp_path)
    assert code == 0, err
    report = check_run(tmp_path, "style", 4)
    assert report["content_style_loss"] == 0 and report["style_ratio"] is None
    assert "no ratio" in out.splitlines()[0] and "%" not in out.splitlines()[0]
    assert "no ratio" in report["images"][2]["caption"]
    assert "no ratio" in report["metrics"]["style loss / content photo's"]


# --- bad input -----------------------------------------------------------------------


def test_unknown_layer_lists_the_valid_ones(capsys):
    code, _, err = run(capsys, "invert", "sample:cat", "--layer", "block99")
    assert_one_line_error(
        code, err, "unknown layer 'block99'", "stem", "block15", "logits", "fool layers"
    )
    code, _, err = run(capsys, "dream", "sample:cat", "--layer", "Head")
    assert_one_line_error(code, err, "unknown layer 'Head'", "head")


def test_a_style_strip_is_one_line(capsys, tmp_path):
    # Resizing it to cover the content would have made it 66 times the content's size.
    strip = tmp_path / "strip.png"
    io.write_png(strip, np.full((2, 200, 3), 0.5, np.float32))
    out = tmp_path / "run"
    code, _, err = run(capsys, "style", "sample:cat", strip, "--size", "32", "--out", out)
    assert_one_line_error(code, err, "the style image of 200x2 pixels", "crop it nearer")
    assert not out.joinpath("report.json").exists()


def test_style_layers_must_be_spatial(capsys):
    code, _, err = run(
        capsys, "style", "sample:cat", "sample:coffee", "--style-layers", "stem,pool"
    )
    assert_one_line_error(code, err, "unknown spatial layer 'pool'", "--style-layers", "head")
    assert "logits" not in err


def test_unknown_class_suggests_close_names(capsys):
    code, _, err = run(capsys, "visualize", "--class", "robbin")
    assert_one_line_error(code, err, 'unknown class "robbin"', "robin")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["invert", "sample:cat", "--layer", "pool", "--tv-weight", "0"],
            "--tv-weight must be > 0",
        ),
        (
            ["invert", "sample:cat", "--layer", "pool", "--alpha-weight", "-1"],
            "--alpha-weight must be > 0",
        ),
        (["visualize", "--class", "robin", "--tv-weight", "-0.5"], "--tv-weight must be > 0"),
        (["style", "a.png", "b.png", "--style-weight", "0"], "--style-weight must be > 0"),
        (["style", "a.png", "b.png", "--content-weight", "nan"], "--content-weight must be > 0"),
        (["style", "a.png", "b.png", "--tv-weight", "-1"], "--tv-weight must be > 0"),
        (["dream", "sample:cat", "--layer", "head", "--lr", "0"], "--lr must be > 0"),
        (["invert", "sample:cat", "--layer", "pool", "--starts", "0"], "--starts must be >= 1"),
        (["visualize", "--class", "robin", "--steps", "0"], "--steps must be >= 1"),
        (
            ["style", "a.png", "b.png", "--steps", "3000000000"],
            "--steps must be at most 2147483647",
        ),
        (["invert", "sample:cat", "--layer", "pool", "--seed", "-1"], "0<=x<=4294967295"),
        (
            [
                "invert",
                "sample:cat",
                "--layer",
                "pool",
                "--steps",
                "1",
                "--starts",
                "1",
                "--size",
                "16",
                "--beta",
                "inf",
            ],
            "--beta must be in [1, 100], got inf",
        ),  # fmt: skip
        (
            ["dream", "sample:cat", "--layer", "head", "--octave-scale", "1"],
            "--octave-scale must be a finite number > 1, got 1",
        ),
        # With one octave it ran, and report.json held "Infinity", which is not JSON.
        (
            ["dream", "sample:cat", "--layer", "head", "--octaves", "1", "--octave-scale", "inf"],
            "--octave-scale must be a finite number > 1, got inf",
        ),
    ],
)
def test_non_positive_weights_are_rejected(capsys, args, message):
    code, _, err = run(capsys, *args)
    assert_one_line_error(code, err, message)


def test_visualize_needs_a_class_or_a_channel(capsys):
    code, _, err = run(capsys, "visualize")
    assert_one_line_error(code, err, "--class")
    code, _, err = run(capsys, "visualize", "--layer", "head", "--channel", "1280")
    assert_one_line_error(code, err, "--channel 1280 is out of range", "0..1279")


@pytest.mark.parametrize("logits", ["logits", " logits", "logits "])
def test_a_logit_channel_is_refused_for_class(capsys, tmp_path, monkeypatch, logits):
    # It ran a class visualisation (log-softmax, "what ... thinks robin looks like")
    # under the name of a channel objective; " logits", which names the same layer (its
    # spaces are ignored), still did.
    from fooltools import models

    monkeypatch.setattr(models, "load_model", None)  # refused before it is needed
    args = ["visualize", "--layer", logits, "--channel", "15", "--channel", "9"]
    code, _, err = run(capsys, *args, "--size", "32", "--steps", "1", "--out", tmp_path)
    assert_one_line_error(code, err, "--layer logits with --channel", "use --class 15 --class 9")
    assert not (tmp_path / "report.json").exists()


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["dream", "sample:cat"], "--layer"),
        (["visualize", "--channel", "1"], "--layer"),
        (["style", "sample:cat", "sample:coffee"], "--content-layer"),
        (["style", "sample:cat", "sample:coffee"], "--style-layers"),
    ],
    ids=lambda v: v if isinstance(v, str) else v[0],
)
def test_a_second_layer_is_refused_where_one_is_taken(capsys, tmp_path, monkeypatch, args, flag):
    # Click kept the last one without a word: dream ran on block8 alone, though `fool
    # invert` takes several --layer and a user repeats it just so; style matched the last
    # --style-layers only.
    from fooltools import models

    monkeypatch.setattr(models, "load_model", None)  # refused before it is needed
    twice = [flag, "block3", flag, "block8"]
    code, _, err = run(capsys, *args, *twice, "--out", tmp_path / "run")
    assert_one_line_error(code, err, f"fool {args[0]} takes one {flag}", "got 2: block3, block8")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("past", [1, 3_000_000_000])
def test_jitter_beyond_the_image_side_is_refused(capsys, tmp_path, past):
    # The shift wraps around, so one past the side does nothing more; 3e9 overflowed int32.
    for args, side in [
        (["visualize", "--class", "robin", "--size", "32"], 32),
        (["dream", "sample:cat", "--layer", "head", "--size", "48"], 48),
    ]:
        code, _, err = run(capsys, *args, "--jitter", side + past, "--out", tmp_path / args[0])
        assert_one_line_error(code, err, f"--jitter must be at most the image side, {side} pixels")
        assert not (tmp_path / args[0]).exists()


@pytest.mark.parametrize(
    ("octaves", "room"),
    [
        (["--octaves", "6"], "at most 3 at scale 1.4"),
        (["--octaves", "5000"], "at most 3 at scale 1.4"),  # 1.4**4999 overflowed a float
        (["--octave-scale", "1e300"], "at most 1 at scale 1e+300"),  # (1e300)**2 likewise
    ],
)
def test_too_many_octaves_for_the_image(capsys, tmp_path, octaves, room):
    # The cat at 48 pixels is 48x32: 32 / 1.4**2 rounds to 16, 32 / 1.4**3 to 12.
    args = ["dream", "sample:cat", "--layer", "head", "--size", "48", *octaves]
    code, _, err = run(capsys, *args, "--out", tmp_path)
    assert_one_line_error(code, err, "use fewer octaves", room, "a smaller octave scale")


def test_an_image_too_small_for_one_octave_asks_for_a_larger_one(capsys, tmp_path):
    from fooltools import io

    tiny = io.write_png(tmp_path / "tiny8.png", np.full((8, 8, 3), 0.5, np.float32))
    args = ["dream", tiny, "--layer", "head", "--octaves", "1", "--out", tmp_path / "run"]
    code, _, err = run(capsys, *args)
    assert_one_line_error(code, err, "image is 8x8 pixels, too small", "use a larger image")
    assert "fewer octaves" not in err  # 1 is the fewest there are


def test_style_of_a_content_image_too_small_asks_for_a_larger_one(capsys, tmp_path, monkeypatch):
    # A 1 x 1 photo was styled into a 1 x 1 result and reported like any other.
    from fooltools import io, models

    monkeypatch.setattr(models, "load_model", None)  # refused before it is needed
    one = io.write_png(tmp_path / "one.png", np.full((1, 1, 3), 0.5, np.float32))
    code, _, err = run(capsys, "style", one, "sample:coffee", "--out", tmp_path / "a")
    assert_one_line_error(code, err, "content image is 1x1 pixels, too small to style",
                          "use a larger image")  # fmt: skip
    # The 451 x 300 cat at --size 20 is 20 x 13: it is --size that made it small.
    code, _, err = run(capsys, "style", "sample:cat", "sample:coffee", "--size", "20",
                       "--out", tmp_path / "b")  # fmt: skip
    assert_one_line_error(code, err, "is 20x13 pixels", "use a larger --size (it shrank the")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("octaves", ["1", "3"])
def test_a_photo_shrunk_too_small_by_size_asks_for_a_larger_size(capsys, tmp_path, octaves):
    # "use a larger image" for the 451x300 cat at --size 20 sent the user looking for
    # another photo; it is --size that made it small.
    args = ["dream", "sample:cat", "--layer", "head", "--size", "20", "--octaves", octaves]
    code, _, err = run(capsys, *args, "--out", tmp_path / "run")
    assert_one_line_error(code, err, "20x13", "use a larger --size (it shrank the ")
    assert "larger image" not in err


def test_cli_defaults_are_the_librarys():
    from fooltools import cli_visualize as cv
    from fooltools.visualize import classviz, deepdream, inversion, style

    assert cv._INV == {
        "steps": inversion.STEPS,
        "starts": inversion.STARTS,
        "lr": inversion.LR,
        "tv": inversion.TV_WEIGHT,
        "alpha": inversion.ALPHA_WEIGHT,
    }
    assert cv._VIZ == {"steps": classviz.STEPS, "lr": classviz.LR, "tv": classviz.TV_WEIGHT}
    assert (cv._DREAM["steps"], cv._DREAM["lr"], cv._DREAM["octaves"], cv._DREAM["scale"]) == (
        deepdream.STEPS,
        deepdream.LR,
        deepdream.OCTAVES,
        deepdream.OCTAVE_SCALE,
    )
    assert cv._STYLE == {
        "steps": style.STEPS,
        "lr": style.LR,
        "size": style.SIZE,
        "content": style.CONTENT_WEIGHT,
        "style": style.STYLE_WEIGHT,
        "tv": style.TV_WEIGHT,
    }


def test_every_default_in_the_help_is_the_one_each_command_uses(capsys):
    # Deep Dream strips each octave's steps at steps // 2; the others at steps / 8.
    dream = "steps/2 within each octave, longer past 50 octaves"
    for command, default in [("dream", dream), ("invert", "steps/8")]:
        code, out, _ = run(capsys, command, "--help")
        assert code == 0 and f"[default: {default}]" in " ".join(out.split())


@pytest.mark.parametrize(
    "args",
    [
        ["invert", "sample:cat", "--layer", "pool"],
        ["visualize", "--class", "robin"],
        ["dream", "sample:cat", "--layer", "head"],
        ["style", "sample:cat", "sample:coffee"],
    ],
    ids=lambda args: args[0],
)
def test_an_out_holding_a_run_is_refused_before_any_work(capsys, tmp_path, monkeypatch, args):
    # Each command wrote its files over an earlier run's (its report.json, original.png),
    # leaving that run's other files beside them: an `invert --out` naming a perturb run
    # kept its adversarial.png under an inversion's report.
    from fooltools import models

    (tmp_path / "report.json").write_text('{"title": "an earlier run"}')
    (tmp_path / "original.png").write_bytes(b"earlier")

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded for a run that is refused")

    monkeypatch.setattr(models, "load_model", no_model)
    code, _, err = run(capsys, *args, "--steps", "1", "--size", "32", "--out", tmp_path)
    assert_one_line_error(code, err, f"{tmp_path} already holds a run (report.json)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["original.png", "report.json"]
    assert (tmp_path / "report.json").read_text() == '{"title": "an earlier run"}'


@pytest.mark.parametrize(
    ("args", "photo"),
    [
        (["invert", "original.png", "--layer", "pool"], "original.png"),
        (["dream", "dream.png", "--layer", "head"], "dream.png"),
        (["style", "content.png", "sample:coffee"], "content.png"),
        (["style", "sample:cat", "style.png"], "style.png"),
    ],
    ids=lambda v: v if isinstance(v, str) else v[0],
)
def test_an_input_photo_the_run_would_write_over_is_refused(
    capsys, tmp_path, monkeypatch, args, photo
):
    # `fool style content.png style.png --out .` replaced both photos by their shrunk
    # copies (the run writes content.png and style.png), silently and for good.
    import shutil

    from fooltools import io, models

    shutil.copy(io.sample_path("cat"), tmp_path / photo)
    before = (tmp_path / photo).read_bytes()
    monkeypatch.setattr(models, "load_model", None)  # refused before it is needed
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *args, "--steps", "1", "--size", "32", "--out", ".")
    assert_one_line_error(code, err, f"{photo} is in --out . and the run writes its own {photo}")
    assert [p.name for p in tmp_path.iterdir()] == [photo]
    assert (tmp_path / photo).read_bytes() == before


@pytest.mark.parametrize("size", [13378, 3_000_000_000, 10**20])
def test_a_side_past_what_can_be_saved_is_refused(capsys, tmp_path, monkeypatch, size):
    # A PNG past Pillow's limit could not be read back once the run was done; 3e9 ended
    # in JAX's traceback (visualize) or an abort (invert), 1e20 in a TypeError.
    from fooltools import models

    monkeypatch.setattr(models, "load_model", None)  # refused before it is needed
    for args in (
        ["invert", "sample:cat", "--layer", "pool", "--out", tmp_path],
        ["visualize", "--class", "robin", "--out", tmp_path],
        ["layers"],
    ):
        code, _, err = run(capsys, *args, "--size", size)
        assert_one_line_error(code, err, "--size must be at most 13377 (", f"got {size}")
    assert not list(tmp_path.iterdir())


def test_starts_past_int32_are_refused(capsys, tmp_path, monkeypatch):
    # A batch of 1e20 random starts was a TypeError traceback from JAX.
    from fooltools import models

    monkeypatch.setattr(models, "load_model", None)  # refused before it is needed
    code, _, err = run(capsys, "invert", "sample:cat", "--layer", "pool", "--starts", 10**20,
                       "--out", tmp_path)  # fmt: skip
    assert_one_line_error(code, err, f"--starts must be at most 2147483647, got {10**20}")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["invert", "sample:cat", "--layer", "pool", "--steps", "1000", "--every", "1"],
         "--every 1 takes 1000 snapshots; the progress strip holds at most 100: use --every 10"),
        (["visualize", "--class", "robin", "--steps", "202", "--every", "2"],
         "takes 101 snapshots"),
        (["dream", "sample:cat", "--layer", "pool", "--octaves", "4", "--steps", "100",
          "--every", "3"], "--every 3 takes 136 snapshots; the progress strip holds at most "
         "100: use --every 4"),  # 4 octaves of 34
        # It said "use --every 20", which was refused in turn: each octave ends in one.
        (["dream", "sample:cat", "--layer", "pool", "--octaves", "150", "--octave-scale",
          "1.01", "--steps", "20", "--every", "20"], "--every 20 takes 150 snapshots; the "
         "progress strip holds at most 100, and each of the 150 octaves ends in one: use "
         "--octaves 100 or fewer"),
        (["style", "a.png", "b.png", "--steps", "100000", "--every", "1"], "100000 snapshots"),
        # Without --every, its default took 2 snapshots an octave, all kept, past 100 too.
        (["dream", "sample:cat", "--layer", "pool", "--octaves", "150", "--octave-scale",
          "1.01"], "--octaves 150: each octave ends in a snapshot of the progress strip, "
         "which holds at most 100: use --octaves 100 or fewer"),
    ],
)  # fmt: skip
def test_an_every_past_the_progress_strip_is_refused(capsys, tmp_path, args, message):
    # Every snapshot stays in memory until the strip is drawn: --every 1 over 100,000
    # steps was tens of GB, and a PNG too wide for Pillow to read back.
    code, _, err = run(capsys, *args, "--out", str(tmp_path / "run"))
    assert_one_line_error(code, err, message)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("steps", "octaves", "every"), [(20, 3, 10), (20, 50, 10), (20, 51, 20), (9, 40, 5), (7, 20, 3)]
)
def test_dreams_default_every_keeps_the_strip_within_its_100_snapshots(steps, octaves, every):
    # steps/2 (two snapshots an octave) over 51 octaves or more took past 100, all kept.
    from fooltools.cli_visualize import MAX_SNAPSHOTS, _dream_every

    assert _dream_every(steps, octaves) == every
    assert octaves * -(-steps // every) <= MAX_SNAPSHOTS
