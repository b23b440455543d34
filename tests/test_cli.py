import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fooltools import cache
from fooltools.checkpoints import load_state_dict, save_state_dict
from fooltools.cli import main
from fooltools.io import sample_path
from fooltools.models.efficientnet_lite import default_weights


def run(capsys, *args):
    """``fool ARGS`` through main(): (exit code, stdout, stderr)."""
    code = 0
    try:
        main(list(args))
    except SystemExit as e:  # errors exit 2; click may exit 0 explicitly
        code = e.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def run_ok(capsys, *args):
    try:
        main(list(args))
    except SystemExit as e:  # click may exit 0 explicitly
        assert e.code in (0, None)
    return capsys.readouterr()


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


def test_classify_cat_json(capsys):
    out, _ = run_ok(capsys, "classify", "sample:cat", "sample:coffee", "--json", "--top", "3")
    cat, coffee = (json.loads(line) for line in out.strip().splitlines())
    assert cat["model"] == "efficientnet_lite0.in1k" and cat["weights"] is None
    assert cat["image"].endswith("cat.png")
    assert cat["top"][0]["label"] in {"Egyptian cat", "tabby", "tiger cat"}
    assert coffee["top"][0] == {"index": 967, "label": "espresso", "prob": coffee["top"][0]["prob"]}
    assert len(cat["top"]) == 3
    probs = [t["prob"] for t in cat["top"]]
    assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1


def test_classify_json_names_a_given_weights_file(capsys):
    # As every report does (perturb, evolve, the visualisations): the file and its digest.
    lite0 = default_weights("efficientnet_lite0.in1k")
    out, _ = run_ok(capsys, "classify", "sample:cat", "--json", "--weights", str(lite0))
    line = json.loads(out)
    assert line["weights"] == {"path": str(lite0), "digest": cache.file_digest(lite0)}
    assert line["top"][0]["label"] == "Egyptian cat"


def test_out_of_device_memory_is_one_line(capsys, monkeypatch):
    # What no up-front check catches (a batch or image too large for the device): XLA's
    # error, its first line, not the traceback and buffer dump after it.
    import jax

    from fooltools import classify

    def exhausted(*args, **kwargs):
        raise jax.errors.JaxRuntimeError(
            "RESOURCE_EXHAUSTED: Out of memory allocating 129056256000 bytes.\nBuffer 1: ..."
        )

    monkeypatch.setattr(classify, "probabilities", exhausted)
    code, _, err = run(capsys, "classify", "sample:cat")
    assert code == 2
    want = "out of memory (Out of memory allocating 129056256000 bytes.); try a smaller input"
    assert err == f"error: {want}\n"


def test_classify_reads_images_as_it_goes(capsys, monkeypatch, tmp_path):
    # Every image was decoded before the first was classified: at full resolution in
    # float32 (144 MB a 12-megapixel photo), a folder of photos ran out of memory. And an
    # unreadable image after a batch now comes after that batch's lines, not instead.
    import gc
    import weakref

    from fooltools import classify, io

    monkeypatch.setattr(classify, "CHUNK", 2)
    read, alive = io.read_image, []

    def tracked(path):
        gc.collect()
        assert sum(ref() is not None for ref in alive) <= 1, "earlier images still held"
        image = read(path)
        alive.append(weakref.ref(image))
        return image

    monkeypatch.setattr(io, "read_image", tracked)
    bad = tmp_path / "notes.png"
    bad.write_text("these are not pixels\n")
    # Samples whose sizes test_classify_cat_json compiled (the rocket's size compiled anew).
    code, out, err = run(capsys, "classify", "sample:cat", "sample:coffee", "sample:cat",
                         "sample:coffee", str(bad), "--top", "1", "--json")  # fmt: skip
    assert_one_line_error(code, err, "notes.png")
    lines = [json.loads(line) for line in out.strip().splitlines()]
    assert [line["top"][0]["label"] for line in lines][:2] == ["Egyptian cat", "espresso"]
    assert len(lines) == 4 and len(alive) == 4  # the fifth did not decode


def test_classify_bad_files_lose_no_other_results(capsys, tmp_path):
    # One unreadable (or too elongated) file in a batch lost the lines of every image of
    # that batch and of all after it: now each bad file is one error line, in its place.
    bad = tmp_path / "notes.png"
    bad.write_text("these are not pixels\n")
    strip = tmp_path / "strip.png"
    Image.fromarray(np.zeros((1, 600, 3), np.uint8)).save(strip)
    code, out, err = run(capsys, "classify", "sample:cat", str(bad), "sample:coffee",
                         str(strip), "sample:dog", "--top", "1", "--json")  # fmt: skip
    assert code == 2
    lines = [json.loads(line) for line in out.strip().splitlines()]
    assert [line["top"][0]["label"] for line in lines] == ["Egyptian cat", "espresso"]
    assert lines[0]["image"] == str(sample_path("cat"))
    errors = err.strip().splitlines()
    assert len(errors) == 3 and all(e.startswith("error: ") for e in errors), err
    assert "notes.png" in errors[0] and "600x1 pixels is too elongated" in errors[1]
    assert "unknown sample 'dog'" in errors[2]


def test_classify_a_directory_classifies_the_images_in_it(capsys, tmp_path):
    # A directory was an error line ("is a directory"); a run's cells/ or a folder of
    # photos is the natural thing to pass. Its image files in name order, any suffix case.
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(sample_path("cat"), folder / "b-cat.PNG")
    shutil.copy(sample_path("coffee"), folder / "a-coffee.png")
    shutil.copy(sample_path("cat"), folder / ".hidden.png")
    (folder / "notes.txt").write_text("not an image\n")
    (folder / "sub.png").mkdir()
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = run(capsys, "classify", str(folder), str(empty), "sample:coffee",
                         "--top", "1", "--json")  # fmt: skip
    assert_one_line_error(code, err, f"no image files in {empty}")
    lines = [json.loads(line) for line in out.strip().splitlines()]
    assert [Path(line["image"]).name for line in lines] == [
        "a-coffee.png",
        "b-cat.PNG",
        "coffee.png",
    ]
    assert [line["top"][0]["label"] for line in lines] == ["espresso", "Egyptian cat", "espresso"]


def test_classify_table_other_model(capsys):
    out, _ = run_ok(capsys, "classify", str(sample_path("coffee")), "--model", "efficientnet_lite1")
    assert "efficientnet_lite1.in1k" in out
    assert "espresso" in out.splitlines()[1]


def test_models_table(capsys):
    out, _ = run_ok(capsys, "models")
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["name", "top-1", "input"]
    assert any(line.startswith("efficientnet_lite0.in1k") and "yes" in line for line in lines)
    assert any("260x260" in line for line in lines)


def test_labels_lookup(capsys):
    out, _ = run_ok(capsys, "labels", "ostrich", "American robin", "9")
    assert [int(line.split()[0]) for line in out.strip().splitlines()] == [9, 15, 9]


def test_missing_file(capsys, tmp_path):
    code, _, err = run(capsys, "classify", str(tmp_path / "nope.jpg"))
    assert_one_line_error(code, err, "no such file", "nope.jpg")


def test_non_image_file(capsys, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("these are not pixels\n")
    code, _, err = run(capsys, "classify", str(bad))
    assert_one_line_error(code, err, "notes.png")


def test_too_elongated_image(capsys, tmp_path):
    # 600x1 asked for 322 MB of resize weights (12000x1: 129 GB); refused before any.
    strip = tmp_path / "strip.png"
    Image.fromarray(np.zeros((1, 600, 3), np.uint8)).save(strip)
    code, out, err = run(capsys, "classify", str(strip))
    assert_one_line_error(code, err, "600x1 pixels is too elongated", "crop it nearer to square")
    assert out == ""


def test_truncated_jpeg(capsys, tmp_path):
    data = (Path(sample_path("rocket"))).read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    code, _, err = run(capsys, "classify", str(cut))
    assert_one_line_error(code, err, "cut.jpg")


def test_unknown_model(capsys):
    code, _, err = run(capsys, "classify", "sample:cat", "--model", "resnet9000")
    assert_one_line_error(code, err, "unknown model 'resnet9000'")


def test_unknown_class_name_suggests(capsys):
    code, _, err = run(capsys, "labels", "ostrch")
    assert_one_line_error(code, err, 'unknown class "ostrch"', "ostrich (9)")


def test_unknown_sample(capsys):
    code, _, err = run(capsys, "classify", "sample:dog")
    assert_one_line_error(code, err, "dog", "cat")


def test_evolve_seed_is_a_32_bit_seed(capsys):
    # jax.random.key keeps the low 32 bits: 2^32 would have run seed 0's search.
    code, _, err = run(capsys, "evolve", "--class", "robin", "--seed", str(2**32))
    assert_one_line_error(code, err, "--seed", "0<=x<=4294967295")


def test_usage_error_is_one_line(capsys):
    code, _, err = run(capsys, "classify", "sample:cat", "--top", "0")
    assert_one_line_error(code, err, "--top")


def test_wrong_weights_file(capsys, tmp_path):
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"\x80\x02not really a checkpoint")
    code, _, err = run(capsys, "classify", "sample:cat", "--weights", str(bad))
    assert_one_line_error(code, err, "weights.pth")


@pytest.fixture(scope="module")
def lite0_state():
    """The state dict of Lite0's shipped weights (file name -> array)."""
    return load_state_dict(default_weights("efficientnet_lite0.in1k"))


@pytest.mark.filterwarnings("error")  # a numpy warning would be a second line on stderr
@pytest.mark.parametrize(
    ("key", "value", "where"),
    [
        ("_fc.bias", np.nan, "['fc']['bias']"),
        ("_bn0.running_var", -1.0, "['stem']['bias']"),  # folds to NaN
        ("_fc.weight", 1e300, "['fc']['kernel']"),  # inf in float32
    ],
)
def test_weights_that_are_not_finite_are_refused(capsys, tmp_path, lite0_state, key, value, where):
    state = dict(lite0_state)
    state[key] = state[key].astype(np.float64)  # a file may hold float64
    state[key][3] = value
    weights = save_state_dict(tmp_path / "broken.pth", state)
    code, out, err = run(capsys, "classify", "sample:cat", "--weights", str(weights))
    assert_one_line_error(code, err, f"NaN or infinite values in {where}")
    assert "nan" not in out


@pytest.mark.parametrize(
    ("key", "shape", "message"),
    [
        ("_blocks.0._bn1.running_var", (16,), "_blocks.0._bn1.running_var has shape (16,), "
         "expected (32,) (the channels of _blocks.0._depthwise_conv.weight)"),
        ("_conv_head.weight", (1280, 320), "_conv_head.weight has shape (1280, 320), expected"),
    ],
)  # fmt: skip
def test_weights_with_mismatched_batchnorm_are_refused(
    capsys, tmp_path, lite0_state, key, shape, message
):
    state = dict(lite0_state, **{key: np.ones(shape, np.float32)})
    weights = save_state_dict(tmp_path / "mismatched.pth", state)
    code, _, err = run(capsys, "classify", "sample:cat", "--weights", str(weights))
    assert_one_line_error(code, err, "weights do not fit EfficientNet-Lite: " + message)


def test_console_script_exit_code_and_compilation_cache(tmp_path):
    """The installed `fool` really exits 2 with one line; a repeat run compiles nothing new."""
    env = dict(os.environ, FOOLTOOLS_CACHE_DIR=str(tmp_path))
    # The converted weights the suite's cache holds (from the tests above), so the first run
    # does not convert them again: the compilation cache, under test, starts empty.
    (tmp_path / "params").mkdir()
    for entry in (cache.cache_dir() / "params").glob("efficientnet_lite0*.npz"):
        shutil.copy(entry, tmp_path / "params")
    fool = [sys.executable, "-c", "from fooltools.cli import main; main()"]
    # Each run also gets a missing file, reported in its place: the exit code and the one
    # error line come from the same two runs (a third process only imported JAX for them).
    args = [*fool, "classify", "sample:cat", "missing.png", "--json"]
    first = subprocess.run(args, env=env, capture_output=True, text=True)
    assert first.returncode == 2 and first.stderr.strip() == "error: no such file: missing.png"
    assert json.loads(first.stdout)["top"][0]["label"] == "Egyptian cat"
    xla = tmp_path / "xla"
    entries = set(os.listdir(xla))
    assert entries, "the persistent compilation cache stayed empty"
    second = subprocess.run(args, env=env, capture_output=True, text=True)
    assert second.returncode == 2 and second.stderr == first.stderr
    assert set(os.listdir(xla)) == entries  # every executable came from the cache
    assert first.stdout == second.stdout


@pytest.mark.parametrize("after", [1, 4], ids=["while-importing", "into-the-work"])
def test_the_console_script_stopped_by_sigterm_exits_2_with_one_line(tmp_path, after):
    # Its interpreter's teardown, with XLA still running the attack's work, crashed
    # (SIGSEGV, exit 139) in some stopped runs: the script now leaves without it. Stopped
    # before the command line had set its handler (importing jax: on a busy machine that
    # took more than 4 s), it ended with no word and exit -15.
    import signal
    import time

    args = [sys.executable, "-m", "fooltools", "perturb", "sample:cat", "--target", "9",
            "--steps", "2000", "--out", str(tmp_path / "run")]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(after)  # 4: into the work (loading, compiling or attacking)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, (out, err)
    assert err.strip() == "error: interrupted"
    assert not (tmp_path / "run").exists()  # nothing written, nothing left behind


@pytest.mark.parametrize(
    "command",
    [
        ["perturb", "sample:cat", "--target", "9"],
        ["invert", "sample:cat"],
        ["dream", "sample:cat"],
        ["evolve", "--class", "robin"],
        ["detect", "synthetic:0"],
        ["detect", "attack", "synthetic:0"],
        ["run", "experiments/perturb-smoke.toml"],
        ["gallery", "."],
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_an_empty_out_is_refused_not_read_as_the_default(capsys, tmp_path, monkeypatch, command):
    # `--out "$OUT"` with OUT unset: the run went to the default directory (or, for
    # evolve, the current one) instead of failing.
    args = [str(Path.cwd() / a) if a.endswith(".toml") else a for a in command]
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *args, "--out", " ")
    assert_one_line_error(code, err, "--out is empty")
    assert list(tmp_path.iterdir()) == []


def test_help_states_the_defaults_the_code_has(capsys):
    # Written out in the help (reading them would import jax for every --help): checked
    # here against the code, so that they cannot drift apart.
    from fooltools.models import DEFAULT_MODEL
    from fooltools.perturb import DEFAULT_STEPS, SEARCH_STEPS

    help_text = " ".join(run(capsys, "perturb", "--help")[1].split())
    for method, steps in DEFAULT_STEPS.items():
        assert (f"{method} is one step" if steps == 1 else f"{method} {steps}") in help_text
    assert f"({SEARCH_STEPS} rounds: values of c)" in help_text
    for command in (["perturb"], ["evolve"], ["classify"], ["invert"], ["style"]):
        help_text = " ".join(run(capsys, *command, "--help")[1].split())
        assert f"[default: {DEFAULT_MODEL}]" in help_text, command
    # Cut at "et al." in the command list, click's end of a first sentence.
    listing = run(capsys, "--help")[1]
    assert "(Nguyen et al. 2015)." in listing and "(Gatys et al. 2016)." in listing


@pytest.mark.parametrize("group", [[], ["detect"]], ids=["fool", "fool detect"])
def test_a_group_alone_prints_its_help(capsys, group):
    # Click reports a bare group as a usage error whose message is the whole help text:
    # squashed into one error line, it was unreadable.
    code, out, err = run(capsys, *group)
    _, help_out, _ = run(capsys, *group, "--help")
    assert code == 0 and err == "" and out == help_out
    assert "Commands:" in out and len(out.splitlines()) > 5


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["classify", "sample:cat", "--model", ""], "--model is empty; give a name"),
        (["evolve", "--class", "robin", "--model", " "], "--model is empty; give a name"),
        (["classify", "sample:cat", "--weights", ""], "--weights is empty; give a file"),
        (["detect", "synthetic:0", "--cfg", ""], "--cfg is empty; give a file"),
        (["detect", "synthetic:0", "--weights", ""], "--weights is empty; give a file"),
        # An empty image was the path "", the current directory: classify read its images.
        (["classify", "sample:cat", " "], "one of IMAGES is empty; give an image file"),
        (["perturb", "", "--target", "ostrich"], "IMAGE is empty; give an image file"),
        (["detect", "attack", "", "--mode", "vanish"], "IMAGE is empty; give an image file"),
        (["style", "sample:cat", ""], "STYLE is empty; give an image file"),
    ],
)
def test_an_empty_model_or_file_is_refused_not_read_as_the_default(capsys, args, fragment):
    # `--model "$MODEL"` with MODEL unset ran the default model (and `--cfg ""` the
    # bundled detector) as if nothing had been asked.
    code, _, err = run(capsys, *args)
    assert_one_line_error(code, err, fragment)


@pytest.mark.parametrize(
    "args",
    [
        ["perturb", "sample:cat", "--target", "ostrich", "--method", "fgsm"],
        ["evolve", "--class", "robin", "--generations", "1", "--population", "2"],
        ["evolve", "--class", "robin", "--resume"],
        ["run", str(Path(__file__).parents[1] / "experiments" / "perturb-smoke.toml")],
        ["detect", "synthetic:0"],
        ["dream", "sample:cat", "--layer", "head"],
    ],
    ids=lambda args: " ".join(args[:3]).replace(str(Path(__file__).parents[1]), ""),
)
def test_an_out_another_command_is_writing_into_is_refused(capsys, tmp_path, monkeypatch, args):
    # Two commands given one --out both passed the checks for an earlier run (made before
    # the first file is written) and wrote over each other: one's history, the other's
    # images. A flock of our own on the directory stands for the other command.
    import fcntl

    from fooltools import models

    monkeypatch.setattr(models, "load_model", None)  # refused before it is needed
    out = tmp_path / "out"
    out.mkdir()
    other = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, _, err = run(capsys, *args, "--out", str(out))
        assert_one_line_error(code, err, f"another fool command is writing into {out}")
        assert list(out.iterdir()) == []
    finally:
        os.close(other)


def test_a_claimed_out_is_released_and_removed_if_nothing_was_written(capsys, tmp_path):
    # Claimed (created) before the checkpoint is looked for; a command that then fails
    # leaves no empty directory, and its claim ends with it.
    from fooltools import perturb

    out = tmp_path / "new" / "out"
    code, _, err = run(capsys, "evolve", "--class", "robin", "--resume", "--out", str(out))
    assert code == 2 and "resume" in err and not out.exists()
    assert perturb._CLAIMS == {}
    held = perturb.claim_out_dir(out)
    assert perturb.claim_out_dir(out) == held  # held already by this process: nothing to do
    perturb.release_out_dirs()
    assert perturb._CLAIMS == {} and not out.exists()


def test_an_interrupt_dropped_in_a_gc_callback_or_del_is_raised_again():
    # SIGTERM landing in JAX's gc callback (_xla_gc_callback) raised its KeyboardInterrupt
    # where Python prints and drops exceptions: `fool perturb` ran on to the end, exit 0,
    # and ignored later SIGTERMs.
    import contextlib
    import gc
    import signal
    import time

    from fooltools.cli import _terminate_as_interrupt

    class Dropped:
        def __del__(self):
            raise KeyboardInterrupt

    deadline = time.monotonic() + 10
    # As in a job started with & by a script: SIGINT ignored (an earlier test may also
    # have left its own handler), so redelivering through SIGINT did nothing.
    previous, alarm = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.getsignal(signal.SIGALRM)
    with contextlib.ExitStack() as stack:
        stack.callback(signal.signal, signal.SIGINT, previous)
        stack.enter_context(pytest.raises(KeyboardInterrupt))
        stack.enter_context(_terminate_as_interrupt())
        Dropped()  # collected at once: its interrupt is raised in __del__ and dropped
        gc.collect()
        while time.monotonic() < deadline:  # the command's work goes on
            time.sleep(0.01)
    assert time.monotonic() < deadline
    assert signal.getsignal(signal.SIGALRM) == alarm  # the alarm's handler undone
