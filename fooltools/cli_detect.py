"""``fool detect``: run, attack and evaluate the object detectors (a click group).

``fool detect IMAGE`` is short for ``fool detect image IMAGE``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fooltools.cli import IMAGE, IN_FILE, OUT_DIR, SEED
from fooltools.errors import FoolError

if TYPE_CHECKING:
    from fooltools.detection.detectors import Detector
    from fooltools.detection.evaluate import Evaluation

_MODES = ("vanish", "fabricate", "mislabel", "untargeted", "dag")
DETECTIONS = "detections.json"  # what `fool detect IMAGE` writes, with boxes.png


class _ImageByDefault(click.Group):
    """A group whose first argument, when it is not a subcommand, is the ``image`` command's."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["image", *args]
        return super().parse_args(ctx, args)


def _not_nan(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    # FloatRange compares, and every comparison with NaN is false.
    if value is not None and math.isnan(value):
        raise click.BadParameter(f"{value} is not a number in [0, 1]", ctx, param)
    return value


def _detector_options(f: Callable) -> Callable:
    """``--detector``, ``--cfg``, ``--weights``, ``--names``, ``--variant``, ``--confidence``."""
    for option in reversed(
        (
            click.option(
                "--detector",
                type=click.Choice(["yolo", "faster-rcnn"]),
                default="yolo",
                show_default=True,
            ),
            click.option(
                "--cfg",
                type=IN_FILE,
                help="Darknet .cfg (YOLO) [default: the bundled synthetic-data detector].",
            ),
            click.option(
                "--weights",
                type=IN_FILE,
                help="Darknet .weights or torchvision .pth [default: the bundled one].",
            ),
            click.option(
                "--names",
                type=IN_FILE,
                help="Class names of your --weights, one per line (a Darknet .names file) "
                "[default: class0, class1, ...; the bundled detectors' own].",
            ),
            click.option(
                "--variant",
                help="Faster R-CNN weights: the torchvision builder whose resize, proposal "
                "and anchor settings to use (fasterrcnn_resnet50_fpn, "
                "fasterrcnn_mobilenet_v3_large_fpn, fasterrcnn_mobilenet_v3_large_320_fpn) "
                "[default: the first that fits the weights].",
            ),
            click.option(
                "--confidence",
                type=click.FloatRange(0, 1),
                callback=_not_nan,
                help="Score at which a detection counts as an object (drawn, counted); "
                "both detectors return none under 0.05, so a lower one counts as 0.05 "
                "[default: the detector's operating point: 0.7 bundled YOLO, 0.8 bundled "
                "Faster R-CNN, 0.5 other weights].",
            ),
        )
    ):
        f = option(f)
    return f


def _load(
    detector: str,
    cfg: str | None,
    weights: str | None,
    variant: str | None = None,
    names: str | None = None,
) -> Any:
    from fooltools.detection.detectors import load_detector, read_class_names

    if cfg and detector != "yolo":
        raise FoolError("--cfg is for --detector yolo (a Faster R-CNN needs only --weights)")
    if variant and (detector != "faster-rcnn" or not weights):
        raise FoolError("--variant is for --detector faster-rcnn with --weights")
    if names and not weights:
        raise FoolError("--names is for your own --weights (the bundled detectors have theirs)")
    class_names = read_class_names(names) if names else None
    return load_detector(
        detector, cfg=cfg, weights=weights, variant=variant, class_names=class_names
    )


def _target_index(det: Any, name: str | None) -> int | None:
    from fooltools.detection.attack_run import class_index

    return None if name is None else class_index(det.class_names, name, det.name)


def _write_json(path: Path, data: Any) -> None:
    from fooltools.io import write_bytes_atomic

    write_bytes_atomic(path, (json.dumps(data, indent=2) + "\n").encode())


_HELP = """Object detectors (YOLO, Faster R-CNN): detect, attack, evaluate.

\b
fool detect IMAGE                    boxes on IMAGE (bundled synthetic-shape detector)
fool detect attack IMAGE --mode M    TOG vanish|fabricate|mislabel|untargeted, or DAG
fool detect eval [--attack M]        mAP@0.5 clean vs attacked, held-out synthetic set
"""


@click.group(cls=_ImageByDefault, help=_HELP)
def detect() -> None:
    """The ``fool detect`` group (help text in ``_HELP``, which click must not rewrap)."""


@detect.command()
@click.argument("image", type=IMAGE)
@_detector_options
@click.option(
    "--out", "out_dir", type=OUT_DIR, help="Output directory [default: runs/detect-<timestamp>]."
)
def image(
    image: str, detector: str, cfg: str | None, weights: str | None, names: str | None,
    variant: str | None, confidence: float | None, out_dir: str | None,
) -> None:  # fmt: skip
    """Detect objects in IMAGE: prints them, writes boxes.png and detections.json.

    IMAGE may be ``synthetic:N``, image N of the held-out synthetic set (written beside
    them as synthetic-N.png). An --out that already holds detections or a run is refused.
    """
    import numpy as np

    from fooltools.detection.attack_run import resolve_image
    from fooltools.detection.detectors import detect_images
    from fooltools.detection.draw import draw_boxes, records
    from fooltools.io import make_dir, read_image, to_uint8, write_png
    from fooltools.perturb import check_out_dir, default_out_dir

    if out_dir:
        # An earlier detection's boxes.png and detections.json were overwritten without a
        # word; a run of another kind is refused as fool perturb refuses it.
        check_out_dir(out_dir, _user_image(image), lambda name: name == "boxes.png")
        if (Path(out_dir) / DETECTIONS).exists():
            raise FoolError(
                f"{out_dir} already holds detections ({DETECTIONS}); choose another --out"
            )
    # Loaded first: synthetic:N is written into the run directory, which a wrong weights
    # file then left behind holding it.
    det = _load(detector, cfg, weights, variant, names)
    out = Path(out_dir) if out_dir else default_out_dir(kind="detect")
    path = resolve_image(image, out)
    x = read_image(path)
    make_dir(out)
    found = detect_images(det, x[None])
    confidence = det.confidence if confidence is None else confidence
    dets = records(found, 0, det.class_names, confidence)
    write_png(out / "boxes.png", draw_boxes(to_uint8(x), dets).astype(np.float32) / 255)
    record = {"image": str(path), "detector": det.name, "objects": dets}
    _write_json(out / DETECTIONS, record)
    for d in dets:
        box = ", ".join(f"{v:.0f}" for v in d["box"])
        click.echo(f"{d['label']:>12} {100 * d['score']:5.1f}%  [{box}]")
    # A detection lists a fixed number of boxes (torchvision's box_detections_per_img).
    full = f"; at most {slots} are listed" if len(dets) >= (slots := found.valid.shape[-1]) else ""
    click.echo(f"{len(dets)} objects (score >= {confidence}{full}) -> {out}")


def _user_image(arg: str) -> list[Path]:
    """The user's own image file an IMAGE names (none for ``synthetic:N``, written by us)."""
    from fooltools.cli import resolve_image

    return [] if arg.startswith("synthetic:") else [resolve_image(arg)]


@detect.command()
@click.argument("image", type=IMAGE)
@click.option("--mode", type=click.Choice(_MODES), required=True, help="TOG attack, or DAG.")
@click.option("--target-class", help="Class name or index to mislabel objects as.")
@click.option("--norm", type=click.Choice(["linf", "l2"]), default="linf", show_default=True)
@click.option(
    "--eps", help="Budget in [0,1] pixel units [default: 8/255 (TOG) for linf, 3.0 for l2]."
)
@click.option(
    "--step-size", help="Step per iteration [default: 2/255 (TOG) for linf, 0.75 for l2]."
)
@click.option("--steps", type=click.IntRange(1), default=10, show_default=True)
@_detector_options
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=SEED,
    help="Seed of dag's random labels (dag only).",
)
@click.option(
    "--out", "out_dir", type=OUT_DIR,
    help="Run directory [default: runs/detect-attack-<timestamp>].",
)  # fmt: skip
def attack(
    image: str, mode: str, target_class: str | None, norm: str, eps: str | None,
    step_size: str | None, steps: int, detector: str, cfg: str | None, weights: str | None,
    names: str | None, variant: str | None, confidence: float | None, seed: int,
    out_dir: str | None,
) -> None:  # fmt: skip
    """Attack the detector on IMAGE; writes clean/adversarial images with boxes and a report.

    The run directory gets adversarial.png, perturbation.png (amplified), clean_boxes.png,
    adversarial_boxes.png, report.json and index.html. IMAGE may be ``synthetic:N``, image
    N of the held-out synthetic set (written there as synthetic-N.png). An --out that
    already holds a run is refused.
    """
    from fooltools.cli import parse_eps
    from fooltools.detection.attack_run import OUTPUTS, attack_file, check, resolve_image
    from fooltools.perturb import check_out_dir, default_out_dir

    seed_source = click.get_current_context().get_parameter_source("seed")
    if mode != "dag" and seed_source != click.core.ParameterSource.DEFAULT:
        # As fool perturb: runs over seeds were one run, each report recording another seed.
        raise FoolError(
            f"--seed draws dag's random labels; {mode} draws no random numbers, so every "
            "seed would give the same run"
        )
    if out_dir:
        # As fool perturb: writing into an earlier run would overwrite its results.
        check_out_dir(out_dir, _user_image(image), lambda name: name in OUTPUTS)
    det = _load(detector, cfg, weights, variant, names)
    if mode == "mislabel" and target_class is None:
        raise FoolError("--mode mislabel needs --target-class")
    if mode != "mislabel" and target_class is not None:
        raise FoolError(f"--target-class is for --mode mislabel; {mode} takes none")
    kw = {"norm": norm, "steps": steps, "target_class": _target_index(det, target_class)}
    for key, text in (("eps", eps), ("step_size", step_size)):
        if text is not None:
            kw[key] = parse_eps(text, "--" + key.replace("_", "-"))
    check(det, mode, **kw)
    out = Path(out_dir) if out_dir else default_out_dir(kind="detect-attack")
    path = resolve_image(image, out)
    confidence = det.confidence if confidence is None else confidence
    report = attack_file(det, path, out, mode=mode, seed=seed, confidence=confidence, **kw)
    m = report["metrics"]
    if report["success"] is None:
        click.echo(f"nothing to attack: {path} has {report['note']}")
    counts = (m["clean_objects"], m["adversarial_objects"])
    full = f" (at most {m['max_objects']} are listed)" if max(counts) >= m["max_objects"] else ""
    click.echo(
        f"{mode}: {m['clean_objects']} objects -> {m['adversarial_objects']}{full}"
        # L2 in 0-255 units, as L-inf and as fool perturb prints both.
        f"  L-inf {m['linf_255']:.0f}/255  L2 {255 * m['l2']:.1f}/255  in {m['seconds']:.1f}s"
        f"  -> {out}"
    )


def _check_eval_memory(n: int, *, attacked: bool) -> None:
    """Refuse ``--images n`` whose images alone exceed this machine's memory.

    The held-out set is made whole, in float32 (and attacked, a second copy): past the
    RAM the kernel killed the process without a word.

    Raises:
        FoolError: Naming the memory needed and the memory there is.
    """
    from fooltools.detection.synthetic import DEFAULT_SIZE
    from fooltools.limits import host_memory

    h, w = DEFAULT_SIZE
    need, have = n * h * w * 3 * 4 * (2 if attacked else 1), host_memory()
    if have is not None and need > have:
        raise FoolError(
            f"--images {n} needs at least {need / 2**30:.1f} GiB for the images alone, more "
            f"than the {have / 2**30:.1f} GiB of this machine: use fewer"
        )


def _relabelled(rate: float | None) -> str:
    """The mislabel rate's part of ``eval``'s objects line ("" without one)."""
    if rate is None:
        return ""
    if math.isnan(rate):  # every clean object was of the target class already ("nan%")
        return "; relabelled as target: - (no object of another class)"
    return f"; relabelled as target: {100 * rate:.1f}%"


def _attack_modes(text: str | None) -> tuple[str, ...]:
    """``eval``'s ``--attack``: modes separated by commas, or ``all`` (empty: none).

    Raises:
        FoolError: An unknown mode, or none listed.
    """
    if text is None:
        return ()
    names = [m.strip().lower() for m in text.split(",") if m.strip()]
    if names == ["all"]:
        return _MODES
    bad = [m for m in names if m not in _MODES]
    if bad or not names:
        raise FoolError(
            f"unknown --attack {bad[0] if bad else text!r}; choose from {', '.join(_MODES)} "
            "(several separated by commas), or all"
        )
    return tuple(dict.fromkeys(names))


@detect.command(name="eval")
@click.option(
    "--attack",
    help="Also evaluate under attack: vanish, fabricate, mislabel, untargeted or dag, several "
    "separated by commas, or all (each mode in turn, one compiled attack for all).",
)
@click.option("--target-class", help="Class name or index for --attack mislabel.")
@click.option("--images", "n", type=click.IntRange(1), default=100, show_default=True)
@click.option("--steps", type=click.IntRange(1), default=10, show_default=True)
@click.option("--eps", help="Budget in [0,1] pixel units [default: 8/255 (TOG)].")
@click.option(
    "--detector", "detectors", type=click.Choice(["yolo", "faster-rcnn", "both"]), default="both",
    show_default=True,
)  # fmt: skip
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object per detector and attack on stdout."
)
def eval_cmd(
    attack: str | None, target_class: str | None, n: int, steps: int, eps: str | None,
    detectors: str, as_json: bool,
) -> None:  # fmt: skip
    """mAP@0.5 of the bundled detectors on the held-out synthetic set, clean vs attacked."""
    from fooltools.cli import parse_eps
    from fooltools.detection import synthetic
    from fooltools.detection.attack_run import check
    from fooltools.detection.evaluate import evaluate

    modes = _attack_modes(attack)
    if target_class is not None and "mislabel" not in modes:
        raise FoolError("--target-class is for --attack mislabel")
    # As fool detect attack: the first class, taken silently, was named in no output.
    if "mislabel" in modes and target_class is None:
        among = "" if modes == ("mislabel",) else f" (in --attack {attack})"
        raise FoolError(f"--attack mislabel needs --target-class{among}")
    if eps is not None and not modes:
        raise FoolError("--eps is the budget of --attack; a clean evaluation takes none")
    steps_given = click.get_current_context().get_parameter_source("steps")
    if not modes and steps_given is not click.core.ParameterSource.DEFAULT:
        raise FoolError("--steps is for --attack; a clean evaluation takes none")
    budget = {"eps": parse_eps(eps)} if modes and eps else {}
    _check_eval_memory(n, attacked=bool(modes))
    data = synthetic.make_dataset(synthetic.TEST_SEED, n)
    kinds = ("yolo", "faster-rcnn") if detectors == "both" else (detectors,)
    # Every detector and mode checked before the first runs: a bad target or budget is
    # one line, not a line after minutes of attacks.
    runs = []
    for kind in kinds:
        det = _load(kind, None, None)
        for mode in modes or (None,):
            kw: dict[str, Any] = {"steps": steps, **budget} if mode else {}
            if mode == "mislabel":
                kw["target_class"] = _target_index(det, target_class)
            if mode:
                check(det, mode, **kw)
            runs.append((det, mode, kw))
    for det, mode, kw in runs:
        _print_evaluation(evaluate(det, data, attack=mode, **kw), det, mode, n, as_json)


def _print_evaluation(
    result: Evaluation, det: Detector, mode: str | None, n: int, as_json: bool
) -> None:
    """``eval``'s output for one detector and attack: a JSON line, or a small table."""
    if as_json:
        click.echo(json.dumps(result.as_json()))
        return
    click.echo(f"{result.detector}: {n} held-out images, attack {mode or '-'}")
    click.echo(f"  {'class':<10} {'clean AP':>9} {'attacked':>9}")
    for name, ap in result.clean_ap.items():
        adv = result.attacked_ap.get(name)
        click.echo(f"  {name:<10} {ap:9.3f} {'' if adv is None else f'{adv:9.3f}':>9}")
    adv_map = "" if result.attacked_map50 is None else f"{result.attacked_map50:9.3f}"
    click.echo(f"  {'mAP@0.5':<10} {result.clean_map50:9.3f} {adv_map:>9}")
    if mode:
        click.echo(
            f"  objects (score >= {det.confidence}): {result.clean_objects} -> "
            f"{result.attacked_objects}" + _relabelled(result.mislabel_rate)
        )
    click.echo(f"  {result.seconds:.1f}s")
