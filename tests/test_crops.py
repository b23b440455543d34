"""Scoring averaged over crops (``--crops`` of ``fool evolve`` and ``fool classify``)."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sharding_probe
from sharding_probe import S
from test_cli import run as fool
from test_experiments import run_grid

from fooltools import io, rng
from fooltools.classify import probabilities
from fooltools.errors import FoolError
from fooltools.evolve import cli_support
from fooltools.evolve.direct import direct
from fooltools.evolve.run import evolve_single
from fooltools.evolve.search import SearchConfig
from fooltools.models import crops as views

ROBIN = 15
# One search configuration for every run here (the CLI's GA keeps 2 elites, as this
# does): the direct encoding on 10 crops, 16 a generation. Each other population or crop
# count compiled its own evaluator and breeder (~5 s apiece).
P = 16


@pytest.fixture(scope="module")
def tiny():
    """The linear 12 x 12 'ImageNet' classifier of test_evolve.py."""
    return sharding_probe.tiny()


def test_crops_are_corners_centre_and_mirrors_in_tencrop_order():
    # torchvision's TenCrop: top-left, top-right, bottom-left, bottom-right, centre, then
    # the same five of the image mirrored left to right.
    assert views.view_size((224, 224)) == (256, 256)
    assert views.view_size((260, 260)) == (297, 297)
    ten = views.crop_offsets((256, 256), (224, 224), 10)
    five = [[0, 0, 0], [0, 32, 0], [32, 0, 0], [32, 32, 0], [16, 16, 0]]
    assert ten.tolist() == five + [[t, left, 1] for t, left, _ in five]
    assert views.crop_offsets((256, 256), (224, 224), 5).tolist() == five


@pytest.mark.parametrize("crops", [5, 10])
def test_averaged_softmax_is_the_mean_of_the_crops_softmax(tiny, crops):
    scorer = views.averaged(tiny, crops)
    side = views.view_size((S, S))
    assert scorer.info.input_size == side == (14, 14)
    assert scorer.name == f"tiny, mean of {crops} crops"
    x = np.asarray(jax.jit(rng.uniform, static_argnums=1)(jax.random.key(1), (3, *side, 3)))
    # Reference: cut each crop with numpy, classify it alone, average the probabilities.
    probs = []
    for top, left, mirrored in views.crop_offsets(side, (S, S), crops):
        crop = x[:, top : top + S, left : left + S]
        crop = crop[:, :, ::-1] if mirrored else crop
        probs.append(jax.nn.softmax(tiny.logits(tiny.params, jnp.asarray(crop)), axis=-1))
    want = np.mean(probs, axis=0)
    got = np.asarray(jax.nn.softmax(jax.jit(scorer.logits)(scorer.params, jnp.asarray(x))))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # The crops differ (else the mean would be any one of them).
    assert np.abs(np.asarray(probs[0]) - np.asarray(probs[-1])).max() > 1e-4
    assert views.averaged(tiny, 1) is tiny
    # Feature maps are the centre crop's (offset 1 of 2 here).
    probe = dataclasses.replace(tiny, features=lambda p, v: {"input": v})
    centre = views.averaged(probe, crops).features(tiny.params, jnp.asarray(x))["input"]
    np.testing.assert_array_equal(np.asarray(centre), x[:, 1 : 1 + S, 1 : 1 + S])
    with pytest.raises(ValueError, match="crops must be one of"):
        views.averaged(tiny, 3)


def test_a_search_scored_over_crops_improves_and_saves_at_the_size_it_scored(tiny, tmp_path):
    # The direct encoding's genome is the image the crops are cut from (14 x 14 here).
    scorer = views.averaged(tiny, 10)
    cfg = SearchConfig(population=P, generations=6, elites=2, stop_at=None)
    out = evolve_single(
        scorer, direct(height=14, width=14), "direct", ROBIN, cfg, seed=0, out=tmp_path
    )
    best = [h["best"] for h in out["history"]]
    assert best[-1] > best[0]
    assert out["best_image"].shape == (14, 14, 3)
    conf = views.averaged(tiny, 10).logits(tiny.params, jnp.asarray(out["best_image"]))
    assert float(jax.nn.softmax(conf)[0, ROBIN]) == pytest.approx(out["best_confidence"], rel=1e-5)


def job(tmp_path, crops, **options):
    """``fool evolve --class robin --encoding direct`` for 2 generations of P (or ``options``)."""
    kw = {
        "target": "robin", "map_elites": False, "classes": None, "encoding": "direct",
        "strategy": None, "generations": 2, "population": P, "stop_at": None, "seed": 0,
        "out_dir": str(tmp_path), "resume": False, "checkpoint_every": 1, "crops": crops,
    }  # fmt: skip
    return cli_support.parse_job(**{**kw, **options})


def test_the_report_gives_the_crops_and_a_resume_with_other_crops_is_refused(tiny, tmp_path):
    rep = cli_support.run_job(tiny, job(tmp_path, 10))
    assert (rep["model"], rep["crops"], rep["size"]) == ("tiny", 10, [14, 14])
    assert rep["title"].startswith("robin (direct, mean of 10 crops) ")
    assert io.read_image(tmp_path / "best.png").shape == (14, 14, 3)
    assert json.loads((tmp_path / "report.json").read_text())["crops"] == 10
    # The saved file re-read and scored over the same crops: the search's confidence.
    assert abs(rep["best_confidence"] - rep["best_confidence_in_search"]) <= 0.01
    before = (tmp_path / "checkpoint.npz").read_bytes()
    with pytest.raises(FoolError, match=r"another run \(model = 'tiny, mean of 10 crops'"):
        cli_support.run_job(tiny, job(tmp_path, 5, resume=True))
    assert (tmp_path / "checkpoint.npz").read_bytes() == before


def test_a_bad_crops_count_is_one_line(capsys):
    code, _, err = fool(capsys, "evolve", "--class", "robin", "--crops", "3")
    assert code == 2 and "--crops must be 1 (the model's own view), 5" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_batch_grid_over_crops_gives_each_count_its_own_row(tiny, tmp_path, monkeypatch):
    from fooltools.experiments import tasks

    monkeypatch.setattr(tasks, "_classifier", lambda params: tiny)
    fixed = {"class": "robin", "encoding": "direct", "population": P, "generations": 1}
    results, _ = run_grid(tmp_path, "evolve", fixed, {"crops": [1, 10]})
    assert [r["metrics"]["method"] for r in results] == ["direct", "direct-10crops"]


def test_classify_over_crops_is_the_mean_of_lite0_on_each_crop(capsys, lite0):
    # Reference: the photo resized and centre-cropped to 256 as the model's own
    # preprocessing does, each crop cut with numpy and classified alone by plain Lite0.
    code, out, err = fool(capsys, "classify", "sample:coffee", "--crops", "10", "--json")
    assert code == 0, err
    row = json.loads(out)
    assert row["model"] == "efficientnet_lite0.in1k, mean of 10 crops"
    top = row["top"][0]
    assert top["label"] == "espresso"
    x = np.asarray(io.resize_shorter(jnp.asarray(io.read_image(io.sample_path("coffee"))), 256))
    x = np.asarray(io.center_crop(x, 256))
    cuts = []
    for t, left, mirrored in views.crop_offsets((256, 256), (224, 224), 10):
        cut = x[t : t + 224, left : left + 224]
        cuts.append(cut[:, ::-1] if mirrored else cut)
    want = probabilities(lite0, cuts)[:, top["index"]].mean()
    assert top["prob"] == pytest.approx(want, abs=2e-6)  # the JSON rounds to 6 places


def test_map_elites_over_crops_saves_each_cell_at_the_size_it_scored(tiny, tmp_path):
    cells = {"target": None, "map_elites": True, "classes": "robin,ostrich", "encoding": "cppn"}
    rep = cli_support.run_job(tiny, job(tmp_path, 5, **cells))
    assert rep["filled"] == 2 and rep["title"].startswith("MAP-Elites cppn, mean of 5 crops:")
    cells = sorted((tmp_path / "cells").glob("*.png"))
    assert [io.read_image(c).shape for c in cells] == [(14, 14, 3)] * 2
