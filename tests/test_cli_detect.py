"""`fool detect` through main(), on the small OpenCV-checked test YOLO (random weights).

The bundled detectors' figures (mAP, attack success) are asserted in test_detection_eval.py.
"""

import json

import numpy as np
import pytest
from test_cli import assert_one_line_error, run, run_ok

from fooltools.detection import attack_run, attacks, synthetic
from fooltools.detection.detectors import BUNDLED
from fooltools.io import read_image, write_png

CFG = "tests/data/yolo/tiny_v3.cfg"
WEIGHTS = "tests/data/yolo/tiny_v3.weights"
NET = ["--cfg", CFG, "--weights", WEIGHTS]
BUNDLED_YOLO_CFG, _ = BUNDLED["yolo"]
_, BUNDLED_RCNN = BUNDLED["faster-rcnn"]


@pytest.fixture(scope="module")
def shapes_png(tmp_path_factory):
    image, _, _ = synthetic.make_image(synthetic.TEST_SEED, 0, size=(64, 96))
    return str(write_png(tmp_path_factory.mktemp("img") / "shapes.png", image))


def test_detect_writes_boxes_and_json(capsys, tmp_path, shapes_png):
    out, _ = run_ok(
        capsys, "detect", shapes_png, *NET, "--confidence", "0.3", "--out", str(tmp_path)
    )
    record = json.loads((tmp_path / "detections.json").read_text())
    assert record["image"].endswith("shapes.png") and record["objects"]
    for obj in record["objects"]:
        x1, y1, x2, y2 = obj["box"]
        assert 0 <= x1 <= x2 <= 96 and 0 <= y1 <= y2 <= 64  # clipped to the image
        assert obj["score"] >= 0.3 and obj["label"] == f"class{obj['class_index']}"
    assert f"{len(record['objects'])} objects" in out
    assert read_image(tmp_path / "boxes.png").shape[0] >= 256  # enlarged for legibility


def test_attack_run_directory(capsys, tmp_path, shapes_png):
    out, _ = run_ok(
        # In any case, as classifier classes are named (STAR was an unknown class).
        capsys, "detect", "attack", shapes_png, "--mode", "mislabel", "--target-class", "Class1",
        *NET, "--confidence", "0.3", "--steps", "3", "--out", str(tmp_path),
    )  # fmt: skip
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["kind"] == "detect-attack" and isinstance(report["success"], bool)
    assert report["attack"]["target_class"] == 1 and report["attack"]["steps"] == 3
    adv, clean = read_image(tmp_path / "adversarial.png"), read_image(shapes_png)
    assert adv.shape == clean.shape
    assert np.abs(adv - clean).max() * 255 <= 8 + 1e-3
    assert report["metrics"]["linf_255"] == pytest.approx(np.abs(adv - clean).max() * 255, abs=1e-3)
    assert (tmp_path / "index.html").exists()
    assert "mislabel" in out


def test_l2_attack_has_an_l2_budget(capsys, tmp_path, shapes_png):
    # The L-inf defaults (8/255, step 2/255) read as an L2 radius changed nothing.
    out = run_ok(
        capsys, "detect", "attack", shapes_png, "--mode", "vanish", "--norm", "l2", *NET,
        "--confidence", "0.3", "--steps", "1", "--out", str(tmp_path),
    ).out  # fmt: skip
    report = json.loads((tmp_path / "report.json").read_text())
    attack = report["attack"]
    assert (attack["norm"], attack["eps"], attack["step_size"]) == ("l2", 3.0, 0.75)
    assert 0.5 <= report["metrics"]["l2"] <= 3.0
    # In 0-255 units, as its L-inf and as fool perturb's: a bare "L2 2.91" beside
    # "L-inf 37/255" read as a tiny change.
    assert f"L2 {255 * report['metrics']['l2']:.1f}/255" in out


def test_attack_on_an_image_without_objects_has_nothing_to_attack(
    capsys, tmp_path, shapes_png, monkeypatch
):
    # No score reaches 1: nothing to vanish, which is no success of the attack. Nor is the
    # attack run (compiled first, it took seconds to produce an image thrown away).
    from fooltools.detection import attack_run

    real = attack_run.det_attacks.detection_attack

    def never_run(*args, **kwargs):
        real(*args, **kwargs)  # its arguments still checked
        return lambda *a: pytest.fail("the attack ran on an image with nothing to attack")

    monkeypatch.setattr(attack_run.det_attacks, "detection_attack", never_run)
    code, out, err = run(
        capsys, "detect", "attack", shapes_png, "--mode", "vanish", *NET, "--confidence", "1",
        "--steps", "1", "--out", str(tmp_path),
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["metrics"]["clean_objects"] == 0
    assert report["success"] is None and report["note"] == "no objects at score >= 1.0"
    assert f"nothing to attack: {shapes_png} has no objects at score >= 1.0" in out
    # The image unchanged, as fool perturb's "nothing to do": the attack's output had
    # moved pixels for no goal.
    assert read_image(tmp_path / "adversarial.png").tobytes() == read_image(shapes_png).tobytes()
    assert report["metrics"]["linf_255"] == 0 and report["metrics"]["l2"] == 0
    assert "L-inf 0/255  L2 0.0/255" in out


def test_eval_runs_each_mode_of_a_list_in_turn(capsys):
    # One JSON line per detector and attack, in the order asked (all: the five modes).
    # 8 images: one batch of 8, the attack program test_detection_eval.py compiles too.
    small = ["detect", "eval", "--detector", "yolo", "--images", "8", "--steps", "2"]
    code, out, err = run(capsys, *small, "--attack", "fabricate,vanish,Vanish", "--json")
    assert code == 0, err
    lines = [json.loads(line) for line in out.strip().splitlines()]
    assert [line["attack"] for line in lines] == ["fabricate", "vanish"]
    fabricated, vanished = (line["attacked_objects"] for line in lines)
    assert lines[0]["clean_objects"] == lines[1]["clean_objects"] and vanished < fabricated
    code, out, err = run(capsys, *small, "--attack", "all", "--target-class", "star")
    assert code == 0, err
    heads = [line for line in out.splitlines() if "held-out images" in line]
    assert [h.rsplit(" ", 1)[-1] for h in heads] == list(attacks.MODES)
    assert "relabelled as target" in out


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["attack", "{img}", "--mode", "mislabel", *NET], ["needs --target-class"]),
        (["attack", "{img}", "--mode", "mislabel", "--target-class", "zebra", *NET],
         ["unknown class 'zebra'", "class0"]),
        (["{img}", "--detector", "faster-rcnn", "--cfg", CFG], ["--cfg is for --detector yolo"]),
        (["missing.png", *NET], ["missing.png"]),
        # Digits that str.isdigit takes and int() does not: a ValueError traceback.
        (["synthetic:\u00b2", *NET], ["synthetic:N needs an image number"]),
        (["attack", "{img}", "--mode", "mislabel", "--target-class", "\u00b2", *NET],
         ["unknown class '\u00b2'", "class0"]),
        # An index past the classes was an "unknown class '999'".
        (["attack", "{img}", "--mode", "mislabel", "--target-class", "999", *NET],
         ["class index 999 is out of range for", "its classes are 0-", "class0"]),
        (["attack", "{img}", "--mode", "vanish", "--eps", "-1", *NET], ["eps"]),
        (["attack", "{img}", "--mode", "vanish", "--eps", "inf", *NET], ["--eps must be a number"]),
        (["attack", "{img}", "--mode", "vanish", "--eps", "1e400", *NET], ["--eps must be a"]),
        (["attack", "{img}", "--mode", "vanish", "--eps", "3", *NET],
         ["an L-inf eps is at most 1", "got 3"]),
        # Under one 8-bit level no change survives the rounding: an unchanged image, FAILED.
        (["attack", "{img}", "--mode", "vanish", "--eps", "0.5/255", *NET],
         ["eps must be at least 1/255", "got 0.00196"]),
        (["eval", "--attack", "vanish", "--eps", "0.001"], ["eps must be at least 1/255"]),
        (["attack", "{img}", "--mode", "vanish", "--step-size", "abc", *NET],
         ["--step-size must be a number", "'abc'"]),
        (["attack", "{img}", "--mode", "vanish", "--norm", "l2", "--step-size", "nan", *NET],
         ["--step-size must be a number"]),
        # The loop counter is an int32.
        (["attack", "{img}", "--mode", "vanish", "--steps", "3000000000", *NET],
         ["steps must be in 1..2147483647"]),
        (["eval", "--attack", "vanish", "--steps", "2147483648"],
         ["steps must be in 1..2147483647"]),
        (["attack", "{img}", "--mode", "vanish", "--seed", str(2**64), *NET],
         ["--seed", "0<=x<=4294967295"]),
        # Only DAG's random labels draw from it: runs over seeds were one run.
        (["attack", "{img}", "--mode", "vanish", "--seed", "3", *NET],
         ["--seed draws dag's random labels; vanish draws no random numbers"]),
        (["attack", "{img}", "--mode", "vanish", "--target-class", "class1", *NET],
         ["--target-class is for --mode mislabel; vanish takes none"]),
        (["eval", "--attack", "vanish", "--target-class", "star"], ["is for --attack mislabel"]),
        (["eval", "--eps", "4/255"], ["--eps is the budget of --attack"]),
        # Silently ignored: a clean evaluation reported as if it had attacked for 50 steps.
        (["eval", "--steps", "50"], ["--steps is for --attack"]),
        (["eval", "--attack", "mislabel"], ["--attack mislabel needs --target-class"]),
        (["eval", "--attack", "all"], ["--attack mislabel needs --target-class (in --attack all)"]),
        (["eval", "--attack", "vanish,smudge"], ["unknown --attack 'smudge'", "or all"]),
        (["eval", "--attack", ","], ["unknown --attack ','"]),
        # Every mode is checked before the first runs.
        (["eval", "--attack", "vanish,dag", "--steps", "2147483648"],
         ["steps must be in 1..2147483647"]),
        # The held-out set is made whole: 366 GiB was a kernel OOM kill, not an error.
        (["eval", "--images", "2000000"], ["--images 2000000 needs at least 366.2 GiB"]),
        (["{img}", "--variant", "fasterrcnn_mobilenet_v3_large_fpn"], ["--variant is for"]),
        (["{img}", *NET, "--confidence", "nan"], ["--confidence", "nan is not a number"]),
        (["attack", "{img}", "--mode", "vanish", "--steps", "1", *NET, "--confidence", "nan"],
         ["--confidence", "nan is not a number"]),
        (["attack", "{img}", "--mode", "vanish", *NET, "--confidence", "70"], ["--confidence"]),
        (["{img}", "--detector", "faster-rcnn", "--weights", str(BUNDLED_RCNN), "--variant",
          "fasterrcnn_mobilenet_v3_large_fpn"], ["variant is for other Faster R-CNN weights"]),
        # An --out that cannot be made (a file in the way): before the attack runs.
        (["{img}", *NET, "--out", "{img}/run"], ["cannot create directory", "shapes.png/run"]),
        (["attack", "{img}", "--mode", "vanish", *NET, "--out", "{img}/run"],
         ["cannot create directory", "shapes.png/run"]),
    ],
)  # fmt: skip
def test_bad_input(capsys, shapes_png, args, fragments):
    code, _, err = run(capsys, "detect", *(a.format(img=shapes_png) for a in args))
    assert_one_line_error(code, err, *fragments)


def test_detect_refuses_an_out_holding_detections_or_a_run(capsys, tmp_path, shapes_png):
    # A second detection into the same --out overwrote the first's boxes and JSON.
    first = {"detections.json": '{"objects": "an earlier detection"}', "boxes.png": "png"}
    for name, text in first.items():
        (tmp_path / name).write_text(text)
    code, _, err = run(capsys, "detect", shapes_png, *NET, "--out", str(tmp_path))
    assert_one_line_error(code, err, "already holds detections", "choose another --out")
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == first
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "report.json").write_text("{}")
    code, _, err = run(capsys, "detect", shapes_png, *NET, "--out", str(run_dir))
    assert_one_line_error(code, err, "already holds a run")


@pytest.mark.parametrize(
    ("command", "photo"),
    [(["detect"], "boxes.png"), *((["detect", "attack", "--mode", "vanish"], name)
                                  for name in attack_run.OUTPUTS)],
)  # fmt: skip
def test_an_input_photo_the_run_would_write_over_is_refused(
    capsys, tmp_path, shapes_png, command, photo
):
    # The clean photo was replaced by the attacked image (or the drawing of its boxes),
    # and the report named that as the image attacked.
    (tmp_path / photo).write_bytes(open(shapes_png, "rb").read())
    before = (tmp_path / photo).read_bytes()
    code, _, err = run(capsys, *command, str(tmp_path / photo), *NET, "--out", str(tmp_path))
    assert_one_line_error(code, err, f"writes its own {photo} there (it would replace your")
    assert [p.name for p in tmp_path.iterdir()] == [photo]
    assert (tmp_path / photo).read_bytes() == before


def test_attack_refuses_an_out_holding_a_run(capsys, tmp_path, shapes_png):
    # It wrote over the earlier run's images and report, as fool perturb no longer does.
    (tmp_path / "report.json").write_text('{"title": "an earlier run"}')
    code, _, err = run(capsys, "detect", "attack", shapes_png, "--mode", "vanish", *NET,
                       "--out", str(tmp_path))  # fmt: skip
    assert_one_line_error(code, err, "already holds a run", "choose another --out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    assert "earlier run" in (tmp_path / "report.json").read_text()


def test_bad_model_files(capsys, tmp_path, shapes_png):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text(open(CFG).read().replace("[maxpool]", "[crop]", 1))
    code, _, err = run(capsys, "detect", shapes_png, "--cfg", str(cfg), "--weights", WEIGHTS)
    assert_one_line_error(code, err, "unsupported layer [crop]", "line")
    short = tmp_path / "short.weights"
    short.write_bytes(open(WEIGHTS, "rb").read()[:-40])
    code, _, err = run(capsys, "detect", shapes_png, "--cfg", CFG, "--weights", str(short))
    assert_one_line_error(code, err, "expected", "found")
    sd = tmp_path / "not-a-detector.pth"
    sd.write_bytes(b"PK\x03\x04 not really a zip")
    code, _, err = run(
        capsys, "detect", shapes_png, "--detector", "faster-rcnn", "--weights", str(sd)
    )
    assert_one_line_error(code, err, "not-a-detector.pth")


def test_synthetic_image_argument(capsys, tmp_path):
    run_ok(capsys, "detect", "synthetic:2", *NET, "--out", str(tmp_path))
    expected, _, _ = synthetic.make_image(synthetic.TEST_SEED, 2)
    np.testing.assert_allclose(read_image(tmp_path / "synthetic-2.png"), expected, atol=0.5 / 255)
    code, _, err = run(capsys, "detect", "synthetic:two", *NET)
    assert_one_line_error(code, err, "synthetic:N needs an image number")


@pytest.mark.parametrize(
    "detector,named",
    [("yolo", ["--cfg", str(BUNDLED_YOLO_CFG)]), ("faster-rcnn", ["--weights", str(BUNDLED_RCNN)])],
)
def test_the_bundled_files_named_explicitly_are_the_bundled_detector(
    capsys, tmp_path, monkeypatch, detector, named
):
    monkeypatch.chdir(tmp_path)
    # Whether a detector is the bundled one follows its weights, not whether a file was
    # named: its class names, operating point and (Faster R-CNN) resize and anchors.
    default, _ = run_ok(capsys, "detect", "synthetic:0", "--detector", detector, "--out", "a")
    explicit, _ = run_ok(
        capsys, "detect", "synthetic:0", "--detector", detector, *named, "--out", "b"
    )
    assert explicit.replace("-> b", "") == default.replace("-> a", "")
    assert "square" in explicit and "class" not in explicit
    threshold = {"yolo": 0.7, "faster-rcnn": 0.8}[detector]
    assert f"(score >= {threshold})" in explicit


def test_class_names_of_your_own_weights(capsys, tmp_path, shapes_png):
    # Every user cfg was labelled class0..classN: a COCO "person" was class0, and
    # --target-class person was refused.
    names = tmp_path / "three.names"
    names.write_bytes("\ufeffperson\r\n\r\n stop sign \nN/A\n".encode())
    out, _ = run_ok(capsys, "detect", shapes_png, *NET, "--names", str(names),
                    "--confidence", "0.3", "--out", str(tmp_path / "d"))  # fmt: skip
    record = json.loads((tmp_path / "d" / "detections.json").read_text())
    assert record["objects"]
    names_seen = {("person", "stop sign", "N/A")[o["class_index"]] for o in record["objects"]}
    assert {o["label"] for o in record["objects"]} == names_seen
    run_ok(capsys, "detect", "attack", shapes_png, "--mode", "mislabel", "--target-class",
           "Stop Sign", *NET, "--names", str(names), "--steps", "1",
           "--out", str(tmp_path / "a"))  # fmt: skip
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["attack"]["target_class"] == 1 and "as stop sign" in report["title"]
    # torchvision's COCO names hold "N/A" for every unused id: the first was taken.
    names.write_text("N/A\ncar\nN/A\n")
    code, _, err = run(capsys, "detect", "attack", shapes_png, "--mode", "mislabel",
                       "--target-class", "n/a", *NET, "--names", str(names))  # fmt: skip
    assert_one_line_error(code, err, "class 'n/a' names 2 classes of", "(0, 2); give the index")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--names", "{names2}", *NET], ["2 class names for a 3-class YOLO"]),
        (["--names", "{binary}", *NET], ["is not a class names file (one name per line)"]),
        (["--names", "{empty}", *NET], ["names no class"]),
        (["--names", "{names2}"], ["--names is for your own --weights"]),
        # Either alone was read with the bundled other half: "yolo-synth.weights does
        # not fit tiny_v3.cfg", a file the user never gave.
        (["--cfg", CFG], ["the cfg tiny_v3.cfg needs its Darknet weights: give both"]),
        (["--weights", WEIGHTS], ["the weights tiny_v3.weights need their Darknet cfg: give both"]),
    ],
)
def test_bad_names_and_half_a_detector(capsys, tmp_path, shapes_png, args, fragments):
    (tmp_path / "two.names").write_text("a\nb\n")
    (tmp_path / "binary.names").write_bytes(b"\x89PNG\r\n\x1a\n\0\0")
    (tmp_path / "empty.names").write_text("\n \n")
    paths = {k: str(tmp_path / f"{v}.names") for k, v in
             (("names2", "two"), ("binary", "binary"), ("empty", "empty"))}  # fmt: skip
    code, _, err = run(capsys, "detect", shapes_png, *(a.format(**paths) for a in args))
    assert_one_line_error(code, err, *fragments)


def test_a_full_list_of_detections_says_it_is_capped(capsys, tmp_path):
    # 154 boxes above 0.05 read as "100 objects", and fabrication's success stopped there.
    from test_yolo import ODD

    from fooltools.detection import yolo

    (tmp_path / "odd.cfg").write_text(ODD)
    net = yolo.load_darknet(tmp_path / "odd.cfg")  # random init: boxes everywhere
    yolo.save_darknet_weights(tmp_path / "odd.weights", net.params, tmp_path / "odd.cfg")
    image = str(write_png(tmp_path / "noise.png", np.random.default_rng(0).random((50, 70, 3))))
    odd = ["--cfg", str(tmp_path / "odd.cfg"), "--weights", str(tmp_path / "odd.weights")]
    out, _ = run_ok(capsys, "detect", image, *odd, "--confidence", "0.05",
                    "--out", str(tmp_path / "d"))  # fmt: skip
    assert "100 objects (score >= 0.05; at most 100 are listed)" in out
    out, _ = run_ok(capsys, "detect", image, *odd, "--confidence", "0.5",
                    "--out", str(tmp_path / "e"))  # fmt: skip
    assert "listed" not in out
