"""Acceptance of the gradient attacks on the real model, and `fool perturb` end to end."""

import json
import os
import pty
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_cli import run as run_cli

from fooltools import attacks, io, words
from fooltools.detection.detectors import BUNDLED

TARGETS = [9, 15, 130]  # ostrich, robin, flamingo: none is a sample's own class
SAMPLES = io.sample_names()
OWN_RESOLUTION = ["cat", "astronaut"]  # 300 x 451 and 512 x 512


def judge(clf, tmp, method, res, originals, targets):
    """(success on the PNG re-read from disk, L2 and L-inf in 0-255) per example."""
    apply = jax.jit(clf.logits)
    rows = []
    for i, (x, target) in enumerate(zip(originals, targets, strict=True)):
        path = io.write_png(tmp / f"{method}-{i}.png", res.x[i])
        back = io.read_image(path)
        ok = int(np.argmax(apply(clf.params, jnp.asarray(back)))) == int(target)
        l2 = float(np.sqrt(((back - io.to_uint8(x) / 255.0) ** 2).sum()) * 255)
        rows.append((ok, l2, float(res.linf[i]) * 255))
    return rows


def test_pgd_linf_succeeds_on_two_samples_at_their_own_resolution_after_saving(lite0, tmp_path):
    # Photos at their own resolution (what `fool perturb` attacks): a landscape and a
    # square one, one target each. Every photo x all 3 targets is attacked at the model's
    # resolution in test_perturb_minimal.py; each further resolution here compiles the
    # attack again (~10 s of the suite's time apiece).
    run = attacks.pgd(lite0.logits, lite0.params, eps=8 / 255, steps=10)
    rows = []
    for i, s in enumerate(OWN_RESOLUTION):
        x = jnp.asarray(io.read_image(io.sample_path(s)))
        target = [TARGETS[i % len(TARGETS)]]
        res = run(jax.random.key(0), x[None], jnp.asarray(target))
        rows += judge(lite0, tmp_path, f"pgd-{s}", res, [x], target)
    assert len(rows) == len(OWN_RESOLUTION)
    assert all(ok for ok, _, _ in rows)
    assert max(linf for _, _, linf in rows) <= 8 + 1e-3


def test_perturb_file_reuses_the_compiled_attack_with_each_calls_progress(lite0, tmp_path):
    # Another seed on an image of the same size: the same compiled attack (no new
    # compilation), and progress goes to the callback of the call that runs. (The same
    # settings as the `fool perturb` processes below, which may then load this compiled
    # attack from the suite's persistent cache.)
    from fooltools import perturb

    seen = {"a": [], "b": []}
    before = perturb._cached_attack.cache_info()
    for name, seed in (("a", 0), ("b", 3)):
        cfg = perturb.PerturbConfig(target=None, steps=3, seed=seed)
        report = perturb.perturb_file(
            lite0, io.sample_path("cat"), cfg, tmp_path / name, progress=seen[name].append
        )
        assert not report["targeted"] and report["seed"] == seed
        # No target to report: it stood for the source, whose confidence the page then
        # showed as the "target confidence".
        assert report["target"] is None and report["final"]["target_confidence"] is None
        assert "target confidence" not in report["metrics"]
        want = words.figure(report["final"]["source_confidence"])
        assert report["metrics"]["source confidence"] == want
    after = perturb._cached_attack.cache_info()
    assert after.misses - before.misses <= 1 and after.hits - before.hits >= 1
    for steps in seen.values():  # the bar of each call, up to the last step
        assert steps == sorted(set(steps)) and steps[-1] == 2


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
    # In the units of --eps: a bare "L2 233.5" read as far past an l2 budget of 3.0.
    assert f"L2 {report['distortion_255']['l2']:.1f}/255 " in stdout
    assert io.read_image(out / "adversarial.png").shape == (400, 600, 3)  # input's own size
    assert {"fooltools", "jax"} <= set(report["versions"])
    assert "ostrich" in (out / "index.html").read_text()


def fool_on_a_terminal(*args, env):
    """Run `fool ARGS` in a new process whose stderr is a terminal: (code, stdout, stderr)."""
    master, slave = pty.openpty()
    cmd = [sys.executable, "-c", "from fooltools.cli import main; main()", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    err = b""
    while True:  # drain the terminal as the process writes, until it closes its end
        try:
            data = os.read(master, 1 << 16)
        except OSError:  # EIO: no process holds the terminal any more
            break
        if not data:
            break
        err += data
    os.close(master)
    out = proc.stdout.read().decode()
    return proc.wait(), out, err.decode(errors="replace")


def test_perturb_with_a_progress_bar_same_bytes_and_nothing_compiled_the_second_time(tmp_path):
    # Two processes, the same seed: the same PNG, and the second loads every program,
    # the attack's loop included, from JAX's persistent cache (a loop that called back
    # into Python for its bar could not be stored, and compiled again in every process).
    env = dict(os.environ, JAX_EXPLAIN_CACHE_MISSES="1")
    args = ["perturb", "sample:cat", "--untargeted", "--steps", "3", "--seed", "5"]
    runs = [fool_on_a_terminal(*args, "--out", str(tmp_path / n), env=env) for n in "ab"]
    for code, out, err in runs:
        assert code == 0, err[-2000:]
        assert "[####" in err and "3/3" in err  # the bar was drawn, to the last step
        assert "success:" in out
    misses = [
        line for line in runs[1][2].splitlines() if "PERSISTENT COMPILATION CACHE MISS" in line
    ]
    assert not misses, misses
    a, b = (tmp_path / n / "adversarial.png" for n in "ab")
    assert a.read_bytes() == b.read_bytes()


def test_target_already_reached_is_a_success_with_nothing_to_do(capsys, tmp_path):
    code, out, _ = run_cli(
        capsys, "perturb", "sample:coffee", "--target", "espresso", "--out", str(tmp_path / "r")
    )
    assert code == 0
    assert "nothing to do" in out
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["success"] and report["distortion_255"]["l0"] == 0


@pytest.mark.parametrize(
    ("method", "norm", "eps_255", "steps"),
    [("pgd", "linf", 8, 40), ("fgsm", "l2", 3 * 255, 1), ("cw", None, None, 100)],
)
def test_a_config_resolves_to_what_its_method_runs(method, norm, eps_255, steps):
    # A method without a budget resolves to none: its report and title claim none.
    from fooltools.perturb import PerturbConfig

    given = "l2" if method == "fgsm" else None
    cfg = PerturbConfig(method, norm=given).resolved()
    assert cfg.norm == norm and cfg.steps == steps
    assert (None if cfg.eps is None else cfg.eps * 255) == pytest.approx(eps_255)
    assert cfg.resolved() == cfg  # perturb_file resolves the CLI's resolved config again


def test_a_method_without_a_budget_reports_none(capsys, tmp_path):
    # Already an espresso: nothing runs, but the report is C&W's.
    code, _, _ = run_cli(
        capsys, "perturb", "sample:coffee", "--target", "espresso", "--method", "cw",
        "--out", str(tmp_path / "r"),
    )  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert (report["norm"], report["eps"], report["eps_255"]) == (None, None, None)
    assert report["title"] == "coffee.png -> espresso (cw)"


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--target", "ostrch"], ['unknown class "ostrch"', "ostrich (9)"]),
        (["--target", "ostrich", "--eps", "0"], ["eps must be in (0, 1]"]),
        (["--target", "ostrich", "--eps", "2"], ["eps must be in (0, 1]"]),
        (["--target", "ostrich", "--eps", "8/0"], ["--eps must be a number"]),
        # Under one 8-bit level no pixel of the PNG could change: a no-op run, FAILED.
        (["--untargeted", "--method", "fgsm", "--eps", "0.5/255"], ["at least 1/255", "0.5/255"]),
        (["--untargeted", "--norm", "l2", "--eps", "0.003"], ["eps must be at least 1/255"]),
        (["--untargeted", "--norm", "l2", "--eps", "inf"], ["--eps must be a number", "'inf'"]),
        (["--untargeted", "--norm", "l2", "--eps", "1e300"], ["eps must be in (0, 1e+06]"]),
        (["--target", "ostrich", "--steps", "0"], ["steps must be >= 1"]),
        (["--untargeted", "--steps", "3000000000"], ["steps must be at most 2147483647,"]),
        (
            ["--untargeted", "--method", "cw", "--steps", "500000000"],
            ["steps must be at most 429496729 for cw (5 search rounds"],
        ),
        (["--untargeted", "--seed", str(10**23)], ["--seed", "0<=x<=4294967295"]),
        (["--untargeted", "--seed", str(2**32)], ["--seed", "0<=x<=4294967295"]),
        ([], ["exactly one of --target CLASS or --untargeted"]),
        (["--target", "ostrich", "--untargeted"], ["exactly one of"]),
        (["--target", "ostrich", "--method", "cw", "--eps", "8/255"], ["cw looks for the small"]),
        (["--untargeted", "--method", "lbfgs", "--norm", "l2"], ["eps and norm set the"]),
        (["--untargeted", "--method", "szegedy", "--norm", "linf"], ["szegedy looks for"]),
        (["--untargeted", "--method", "fgsm", "--steps", "10"], ["fgsm is a single step"]),
        (["--untargeted", "--method", "cw", "--seed", "3"], ["cw draws no random numbers"]),
        (["--untargeted", "--method", "fgsm", "--seed", "0"], ["--seed draws pgd's random"]),
    ],
)
def test_bad_perturb_arguments(capsys, tmp_path, args, fragments):
    code, _, err = run_cli(capsys, "perturb", "sample:cat", *args, "--out", str(tmp_path / "r"))
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err
    assert not (tmp_path / "r").exists()


def test_an_out_holding_a_run_is_refused_before_any_work(capsys, tmp_path, monkeypatch, lite0):
    from fooltools import models
    from fooltools.perturb import PerturbConfig, perturb_file

    out = tmp_path / "r"
    out.mkdir()
    (out / "report.json").write_text('{"title": "an earlier run"}')

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded for a run that is refused")

    with monkeypatch.context() as patch:
        patch.setattr(models, "load_model", no_model)
        code, _, err = run_cli(capsys, "perturb", "sample:coffee", "--target", "ostrich",
                               "--out", str(out))  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"{out} already holds a run (report.json)" in err
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]
    assert "an earlier run" in (out / "report.json").read_text()
    # A batch re-running its own run (fool run --resume) still writes over it.
    report = perturb_file(lite0, io.sample_path("coffee"), PerturbConfig(target=967), out)
    assert report["note"] and json.loads((out / "report.json").read_text()) == report


@pytest.mark.parametrize("under", ["", "sub"])
def test_an_out_that_cannot_be_a_directory_is_refused_before_any_work(
    capsys, tmp_path, monkeypatch, under
):
    # A file in the way was found only when original.png was written, after the attack.
    from fooltools import models

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded for a run that is refused")

    monkeypatch.setattr(models, "load_model", no_model)
    out = blocker / under if under else blocker
    code, _, err = run_cli(capsys, "perturb", "sample:coffee", "--target", "ostrich",
                           "--method", "fgsm", "--out", str(out))  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert str(blocker) in err and blocker.read_text() == "not a directory"


@pytest.mark.parametrize("photo", ["original.png", "adversarial.png", "perturbation.png"])
def test_an_input_photo_the_run_would_write_over_is_refused(capsys, tmp_path, monkeypatch, photo):
    # `fool perturb runs/x/adversarial.png --out runs/x` replaced the photo by the attack's
    # output, and the report named the output as its input.
    import shutil

    from fooltools import models

    shutil.copy(io.sample_path("cat"), tmp_path / photo)
    before = (tmp_path / photo).read_bytes()
    monkeypatch.setattr(models, "load_model", None)  # refused before it is needed
    spelled = tmp_path / ".." / tmp_path.name  # another name for the directory
    code, _, err = run_cli(capsys, "perturb", str(tmp_path / photo), "--target", "ostrich",
                           "--method", "fgsm", "--out", str(spelled))  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"is in --out {spelled} and the run writes its own {photo} there" in err
    assert [p.name for p in tmp_path.iterdir()] == [photo]
    assert (tmp_path / photo).read_bytes() == before


def test_unreadable_image(capsys, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really")
    code, _, err = run_cli(capsys, "perturb", str(bad), "--target", "ostrich")
    assert code == 2 and "broken.jpg" in err and len(err.strip().splitlines()) == 1


def test_default_out_dirs_are_claimed_so_concurrent_runs_never_share_one(
    capsys, tmp_path, monkeypatch, lite0
):
    # Two commands started in the same second both found runs/perturb-<stamp> free (it
    # was created only when the first file was written) and wrote their runs into it.
    import datetime
    import types

    from fooltools import perturb

    now = datetime.datetime(2026, 1, 2, 3, 4, 5)
    frozen = types.SimpleNamespace(datetime=types.SimpleNamespace(now=lambda: now))
    monkeypatch.setattr(perturb, "datetime", frozen)
    first, second = (perturb.default_out_dir(tmp_path / "runs") for _ in range(2))
    assert first.name == "perturb-20260102-030405" and second.name == f"{first.name}-2"
    assert first.is_dir() and second.is_dir()
    for made in (first, second):  # their runs' files, which keep them
        (made / "report.json").write_text("{}")
    # A command that fails leaves no empty directory behind.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "junk.weights").write_bytes(bytes(1000))
    cfg = str(BUNDLED["yolo"][0])  # the weights alone are refused before loading
    for args, message in (
        (["perturb", "nope.png", "--untargeted"], "no such file: nope.png"),
        (["dream", "nope.png", "--layer", "head"], "no such file: nope.png"),
        (["detect", "nope.png"], "no such file: nope.png"),
        # synthetic:N is written into the directory: it was left holding the image.
        (["detect", "synthetic:2", "--cfg", cfg, "--weights", "junk.weights"], "does not fit"),
        (["evolve", "--class", "robin", "--model", "nope"], "unknown model 'nope'"),
    ):
        code, _, err = run_cli(capsys, *args)
        assert code == 2 and message in err
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [first.name, second.name]
