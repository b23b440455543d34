"""Acceptance of the gradient attacks on the real model, and `fool perturb` end to end."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fooltools import attacks, io
from fooltools.cli import main

TARGETS = [9, 15, 130]  # ostrich, robin, flamingo: none is a sample's own class
SAMPLES = io.sample_names()


@pytest.fixture(scope="module")
def outcomes(lite0, tmp_path_factory):
    """Per method: (success on the PNG re-read from disk, L2 and L-inf in 0-255) per example.

    PGD attacks every photo at its own resolution (one batch of 3 targets per photo); the
    slower minimal-perturbation attacks get all 12 (photo, target) pairs in one batch at
    the model's resolution (each photo resized and centre-cropped to 224x224 first), which
    keeps the suite's compile time down.
    """
    tmp = tmp_path_factory.mktemp("adv")
    apply = jax.jit(lite0.logits)
    photos = [jnp.asarray(io.read_image(io.sample_path(s))) for s in SAMPLES]
    small = [io.quantize(io.center_crop(io.resize_shorter(x, 224), 224)) for x in photos]
    targets = jnp.asarray(TARGETS * len(SAMPLES))
    out = {}

    def judge(method, res, originals, tgts):
        rows = []
        for i, (x, target) in enumerate(zip(originals, tgts, strict=True)):
            path = io.write_png(tmp / f"{method}-{i}.png", res.x[i])
            back = io.read_image(path)
            ok = int(np.argmax(apply(lite0.params, jnp.asarray(back)))) == int(target)
            l2 = float(np.sqrt(((back - io.to_uint8(x) / 255.0) ** 2).sum()) * 255)
            rows.append((ok, l2, float(res.linf[i]) * 255))
        return rows

    run = attacks.pgd(lite0.logits, lite0.params, eps=8 / 255, steps=40)
    out["pgd"] = []
    for x in photos:
        res = run(jax.random.key(0), jnp.stack([x] * 3), jnp.asarray(TARGETS))
        out["pgd"] += judge("pgd", res, [x] * 3, TARGETS)
    batch = jnp.stack([x for x in small for _ in TARGETS])
    originals = [x for x in small for _ in TARGETS]
    out["pgd224"] = judge("pgd224", run(jax.random.key(0), batch, targets), originals, targets)
    for method, make in {
        "lbfgs": lambda: attacks.lbfgs(lite0.logits, lite0.params, steps=20, search_steps=2),
        "cw": lambda: attacks.cw(lite0.logits, lite0.params, steps=30, search_steps=3),
    }.items():
        out[method] = judge(method, make()(jax.random.key(0), batch, targets), originals, targets)
    return out


def test_pgd_linf_succeeds_on_every_sample_and_target_after_saving(outcomes):
    assert len(outcomes["pgd"]) == 3 * len(SAMPLES)
    assert all(ok for ok, _, _ in outcomes["pgd"])
    assert all(ok for ok, _, _ in outcomes["pgd224"])
    assert max(linf for _, _, linf in outcomes["pgd"]) <= 8 + 1e-3


@pytest.mark.parametrize("method", ["lbfgs", "cw"])
def test_minimal_attacks_succeed_with_smaller_l2_than_pgd(outcomes, method):
    assert all(ok for ok, _, _ in outcomes[method])
    median = np.median([l2 for _, l2, _ in outcomes[method]])
    pgd_median = np.median([l2 for _, l2, _ in outcomes["pgd224"]])  # same images
    assert median < pgd_median, (method, median, pgd_median)


def run_cli(capsys, *args):
    code = 0
    try:
        main(list(args))
    except SystemExit as e:
        code = e.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def test_perturb_writes_a_complete_run(capsys, tmp_path):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(
        capsys,
        "perturb",
        "sample:coffee",
        "--target",
        "ostrich",
        "--method",
        "fgsm",
        "--out",
        str(out),
    )
    assert code == 0, stdout
    for name in (
        "adversarial.png",
        "original.png",
        "perturbation.png",
        "report.json",
        "index.html",
    ):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["source"]["label"] == "espresso"
    assert report["target"] == {"index": 9, "label": "ostrich"}
    assert report["distortion_255"]["linf"] <= 8
    assert io.read_image(out / "adversarial.png").shape == (400, 600, 3)  # input's own size
    assert {"fooltools", "jax"} <= set(report["versions"])
    assert "ostrich" in (out / "index.html").read_text()


def test_perturb_same_seed_same_bytes(capsys, tmp_path):
    files = []
    for name in ("a", "b"):
        code, out, _ = run_cli(
            capsys,
            "perturb",
            "sample:cat",
            "--untargeted",
            "--steps",
            "3",
            "--seed",
            "5",
            "--out",
            str(tmp_path / name),
        )
        assert code == 0, out
        files.append((tmp_path / name / "adversarial.png").read_bytes())
    assert files[0] == files[1]


def test_target_already_reached_is_a_success_with_nothing_to_do(capsys, tmp_path):
    code, out, _ = run_cli(
        capsys, "perturb", "sample:coffee", "--target", "espresso", "--out", str(tmp_path / "r")
    )
    assert code == 0
    assert "nothing to do" in out
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["success"] and report["distortion_255"]["l0"] == 0


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--target", "ostrch"], ['unknown class "ostrch"', "ostrich (9)"]),
        (["--target", "ostrich", "--eps", "0"], ["eps must be in (0, 1]"]),
        (["--target", "ostrich", "--eps", "2"], ["eps must be in (0, 1]"]),
        (["--target", "ostrich", "--eps", "8/0"], ["--eps must be a number"]),
        (["--target", "ostrich", "--steps", "0"], ["steps must be >= 1"]),
        ([], ["exactly one of --target CLASS or --untargeted"]),
        (["--target", "ostrich", "--untargeted"], ["exactly one of"]),
    ],
)
def test_bad_perturb_arguments(capsys, tmp_path, args, fragments):
    code, _, err = run_cli(capsys, "perturb", "sample:cat", *args, "--out", str(tmp_path / "r"))
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err
    assert not (tmp_path / "r").exists()


def test_unreadable_image(capsys, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really")
    code, _, err = run_cli(capsys, "perturb", str(bad), "--target", "ostrich")
    assert code == 2 and "broken.jpg" in err and len(err.strip().splitlines()) == 1
