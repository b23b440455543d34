"""Task kinds an experiment can run, and :func:`run_one`, the unit every executor runs.

A kind is one function ``run(params, out) -> metrics`` that calls the library and writes
its outputs (with a gallery-readable ``report.json``) into ``out``, plus one entry in
:data:`TASKS` declaring its parameters. ``metrics`` holds the table columns of
:data:`METRICS` it can fill (others are left empty).

``run_one`` writes ``result.json`` atomically and last, after the task's own outputs: a run
is finished iff that file exists, so a killed worker never leaves a run that looks done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fooltools.errors import FoolError
from fooltools.limits import INT32_MAX, SEED_MAX

RESULT = "result.json"
# Image arguments that name built-in images rather than paths.
_NAMED = ("sample:", "synthetic:")
ERROR_LOG = "error.txt"
# Columns a task's metrics may fill, in table order. A task's metrics also give the run's
# ``seconds``, as its report has them (its attack or search, summed over the attempts a
# resume continued): result.json's own are the last attempt's, model loading included.
METRICS = ("model", "method", "class", "source", "success", "confidence", "linf", "l2")


@dataclasses.dataclass(frozen=True)
class Param:
    """A parameter of a task kind.

    Attributes:
        types: Accepted Python types of the TOML value (``list``: a list of strings/integers).
        default: Value when the spec does not set it; None means "not set".
        required: The spec must set it, in [fixed] or [grid].
        path: A file path: made absolute against the batch's working directory before a run
            (``sample:NAME`` is left alone), so remote workers find the same file.
        normalise: Maps a type-checked value to its canonical form (e.g. ``"8/255"`` to a
            float); raises FoolError for a bad one.
        only: The runs that take it, when not every run does (e.g. ``"mode mislabel"``):
            for the message refusing a spec where no run does.
        splits: It changes what a run measures without showing in its model, method or
            class (a budget, steps): a grid over it gives the results summary a row per
            value, where a grid over a seed or an image gives more runs of one row.
    """

    types: tuple[type, ...]
    default: Any = None
    required: bool = False
    path: bool = False
    normalise: Callable[[Any], Any] | None = None
    only: str = ""
    splits: bool = False


def _as_given(params: dict[str, Any]) -> dict[str, Any]:
    return dict(params)


@dataclasses.dataclass(frozen=True)
class TaskKind:
    """A kind of run: its function and its parameters (name to :class:`Param`).

    ``identity(params)`` is what a run with ``params`` does: the parameters it does not
    take set to None, and values that name the same thing in several ways (class names
    and indices, ``1`` and ``1.0``, a default left unset or spelled out) made one. Grid
    points with equal identities are one run (:meth:`fooltools.experiments.spec.Spec.runs`).
    It must not raise: a value it cannot interpret stays as given, for the run to refuse.

    ``check(params)``, where given, refuses a run when the spec is loaded (FoolError): for
    values that are wrong whatever the machine, such as a class index out of range of the
    bundled detector's classes, which would otherwise fail only once the run starts.
    """

    run: Callable[[dict[str, Any], Path], dict[str, Any]]
    params: dict[str, Param]
    identity: Callable[[dict[str, Any]], dict[str, Any]] = _as_given
    check: Callable[[dict[str, Any]], None] | None = None


def _eps(value: float | int | str) -> float:
    from fooltools.cli import parse_eps

    # The message's prefix (``fixed.eps:``) names the key; "it" reads on from there.
    return parse_eps(value, "it") if isinstance(value, str) else float(value)


def _classifier(params: dict[str, Any]):
    # load_model memoises per (name, weights) in the process, so a worker running many
    # runs loads and converts the weights once; the attack/classify jits are memoised too.
    from fooltools.models import DEFAULT_MODEL, load_model

    return load_model(params["model"] or DEFAULT_MODEL, weights=params["weights"])


def _imagenet_index(value: str | int | None) -> str | int | None:
    """The ImageNet class ``value`` names, as an index; as given when it names none."""
    from fooltools.labels import imagenet

    try:
        return None if value is None else imagenet().lookup(value)
    except FoolError:
        return value


def _perturb_identity(p: dict[str, Any]) -> dict[str, Any]:
    from fooltools.perturb import DEFAULT_EPS, DEFAULT_STEPS, PerturbConfig

    cfg = PerturbConfig(p["method"], None, p["norm"], p["eps"], p["steps"]).applicable()
    # A default spelled out (steps = 40 for pgd) is the run that leaves it unset, so a
    # resumed batch finds its runs in a spec edited to name it.
    eps = DEFAULT_EPS.get(cfg.norm) if cfg.eps is None and cfg.norm else cfg.eps
    steps = cfg.steps
    if steps is None and cfg.method != "fgsm":
        steps = DEFAULT_STEPS.get(cfg.method)
    # Only PGD's random start draws from the seed (the CLI refuses one for the others).
    seed = p["seed"] if cfg.method == "pgd" else None
    return {**_model_identity(p), "target": _imagenet_index(p["target"]), "norm": cfg.norm,
            "eps": eps, "steps": steps, "seed": seed}  # fmt: skip


def _perturb_config(p: dict[str, Any]):
    """The run's validated :class:`~fooltools.perturb.PerturbConfig` (FoolError if none)."""
    from fooltools.labels import imagenet
    from fooltools.perturb import PerturbConfig

    if (p["target"] is None) == (not p["untargeted"]):
        raise FoolError("give exactly one of target = CLASS or untargeted = true")
    target = None if p["untargeted"] else imagenet().lookup(p["target"])
    cfg = PerturbConfig(p["method"], target, p["norm"], p["eps"], p["steps"], p["seed"])
    # A grid may fix a budget or steps over every method: each takes what it uses.
    return cfg.applicable().resolved()


def _perturb_check(p: dict[str, Any]) -> None:
    _perturb_config(p)


def run_perturb(p: dict[str, Any], out: Path) -> dict[str, Any]:
    """``fool perturb`` on one image: see :func:`fooltools.perturb.perturb_file`."""
    from fooltools.cli import resolve_image
    from fooltools.perturb import perturb_file

    cfg = _perturb_config(p)  # checked when the spec loaded; again, as a spec edited since
    report = perturb_file(_classifier(p), resolve_image(p["image"]), cfg, out)
    final, dist = report["final"], report["distortion_255"]
    return {
        "model": report["model"],
        "method": cfg.label.replace(" ", "-"),
        "class": report["target"]["label"] if report["targeted"] else "untargeted",
        "source": report["source"]["label"],
        "success": report["success"],
        # Targeted: how sure the model is of the target; untargeted: of its new top class.
        "confidence": final["target_confidence"] if report["targeted"] else final["confidence"],
        "linf": dist["linf"],
        "l2": dist["l2"],
        "seconds": report["seconds"],
    }


def _evolve(p: dict[str, Any], out: Path, *, map_elites: bool) -> dict[str, Any]:
    from fooltools.evolve import cli_support

    classes = p.get("classes")
    job = cli_support.parse_job(
        target=None if map_elites else p["class"],
        map_elites=map_elites,
        classes=",".join(map(str, classes)) if isinstance(classes, list) else classes,
        encoding=p["encoding"],
        strategy=p.get("strategy"),
        generations=p["generations"],
        population=p["population"],
        stop_at=p.get("stop_at"),  # map-elites has no stop
        seed=p["seed"],
        out_dir=str(out),
        # A run killed midway left its checkpoint: continue it (bit-identical to no kill).
        resume=(out / "checkpoint.npz").is_file(),
        checkpoint_every=p["checkpoint_every"],
        crops=p["crops"],
    )
    return cli_support.run_job(_classifier(p), job)


def _model_identity(p: dict[str, Any]) -> dict[str, Any]:
    from fooltools.models import DEFAULT_MODEL

    return {**p, "model": p["model"] or DEFAULT_MODEL}


def _evolve_defaults(p: dict[str, Any], map_elites: bool) -> dict[str, Any]:
    """``p`` with the evolve defaults a spec may leave unset spelled out, as ``parse_job``.

    They have no spec default, so that run ids from before keep theirs.
    """
    from fooltools.evolve import cli_support

    used = _model_identity(p)
    for key, default in (
        ("generations", cli_support.GENERATIONS[map_elites]),
        ("population", cli_support.POPULATION[map_elites]),
        ("crops", 1),
    ):
        if used[key] is None:
            used[key] = default
    return used


def _evolve_identity(p: dict[str, Any]) -> dict[str, Any]:
    from fooltools.evolve import cli_support

    used = _evolve_defaults({**p, "class": _imagenet_index(p["class"])}, map_elites=False)
    if used["strategy"] is None:
        used["strategy"] = cli_support.default_strategy(used["encoding"], map_elites=False)
    if isinstance(p["stop_at"], int):
        used["stop_at"] = float(p["stop_at"])  # 1 and 1.0 are one threshold
    return used


def _map_elites_identity(p: dict[str, Any]) -> dict[str, Any]:
    used = _evolve_defaults(p, map_elites=True)
    # As cli_support.parse_job reads them: a comma-separated string or a list, "all".
    names = p["classes"].split(",") if isinstance(p["classes"], str) else p["classes"]
    names = [n.strip() if isinstance(n, str) else n for n in names]
    if [n.lower() if isinstance(n, str) else n for n in names] == ["all"]:
        return {**used, "classes": "all"}  # any spelling, as the CLI reads it
    indices = (_imagenet_index(n) for n in names if n != "")
    return {**used, "classes": list(dict.fromkeys(indices))}


def _evolve_check(p: dict[str, Any]) -> None:
    """What ``parse_job`` would refuse of a run, in the spec's words, before any runs."""
    from fooltools.evolve import cli_support
    from fooltools.labels import imagenet

    imagenet().lookup(p["class"])
    used = _evolve_defaults(p, map_elites=False)
    strategy = p["strategy"] or cli_support.default_strategy(p["encoding"], map_elites=False)
    if strategy == "es" and p["encoding"] != "cppn":
        raise FoolError(
            'strategy "es" evolves one CPPN: use it with encoding "cppn" (the direct '
            'encoding uses "ga")'
        )
    if strategy == "es" and used["population"] % 2:
        raise FoolError(
            f'strategy "es" samples mirrored pairs: population must be even, got '
            f"{used['population']}"
        )


def _map_elites_check(p: dict[str, Any]) -> None:
    from fooltools.evolve import cli_support
    from fooltools.labels import imagenet

    names = p["classes"].split(",") if isinstance(p["classes"], str) else p["classes"]
    cli_support.class_set(names, imagenet(), option="classes")


def _crops(report: dict[str, Any]) -> str:
    # Runs scored over crops are another method: a grid over crops gets a row each.
    return f"-{report['crops']}crops" if report["crops"] > 1 else ""


def run_evolve(p: dict[str, Any], out: Path) -> dict[str, Any]:
    """``fool evolve --class``: one fooling image for one class (Nguyen et al. 2015)."""
    report = _evolve(p, out, map_elites=False)
    return {
        "model": report["model"],
        # The default CPPN search is the evolution strategy; the GA keeps the bare name.
        "method": report["encoding"]
        + ("-es" if report["strategy"] == "es" else "")
        + _crops(report),
        "class": report["target"]["label"],
        "success": report["success"],
        "confidence": report["best_confidence"],
        "seconds": report["seconds"],
    }


def run_map_elites(p: dict[str, Any], out: Path) -> dict[str, Any]:
    """``fool evolve --map-elites``: one archive cell per class; confidence = cells' median."""
    report = _evolve(p, out, map_elites=True)
    return {
        "model": report["model"],
        "method": f"map-elites-{report['encoding']}{_crops(report)}",
        "class": f"{len(report['classes'])} classes",
        "success": report["success"],
        "confidence": report["median_confidence"],
        "seconds": report["seconds"],
    }


def _detect_applicable(p: dict[str, Any]) -> dict[str, Any]:
    """``p`` without what its run does not take: a target but for mislabel, a cfg but for YOLO.

    A grid may fix them over several modes or detectors (as tog-detectors.toml does).
    """
    return {
        **p,
        "target": p["target"] if p["mode"] == "mislabel" else None,
        "cfg": p["cfg"] if p["detector"] == "yolo" else None,
        "names": p["names"] if p["weights"] is not None else None,
    }


def _detect_check(p: dict[str, Any]) -> None:
    """Refuse a run that no detector can run, or the bundled one cannot, before any runs."""
    from fooltools.detection import attacks, detectors, synthetic
    from fooltools.detection.attack_run import class_index

    used = _detect_applicable(p)
    target = used["target"]
    if isinstance(target, int) and target < 0:
        raise FoolError(f"target {target}: a class index is >= 0")
    if isinstance(target, int) and p["weights"] is None and target >= len(synthetic.CLASSES):
        classes = ", ".join(synthetic.CLASSES)
        raise FoolError(f"target {target}: the bundled detectors' classes are 0-4 ({classes})")
    if isinstance(target, str) and p["weights"] is None:
        class_index(synthetic.CLASSES, target, "the bundled detectors")  # a misspelt name
    detectors.check_pair(p["detector"], used["cfg"], p["weights"])
    kw = {k: p[k] for k in ("eps", "step_size", "steps", "norm", "confidence") if p[k] is not None}
    try:
        attacks.check_settings(p["mode"], **kw)
    except ValueError as err:
        raise FoolError(str(err)) from None


def _detect_identity(p: dict[str, Any]) -> dict[str, Any]:
    from fooltools.detection import attacks, synthetic
    from fooltools.detection.attack_run import class_index

    used = _detect_applicable(p)
    # The attack's defaults spelled out (norm = "linf", eps = "8/255", steps = 10) are the
    # run that leaves them unset, as for perturb.
    norm = used["norm"] or "linf"
    if norm in attacks.DEFAULT_EPS:  # an identity must not raise
        eps, step_size = attacks.budget(norm, used["eps"], used["step_size"])
        used.update(norm=norm, eps=float(eps), step_size=float(step_size))
    if used["steps"] is None:
        used["steps"] = attacks.TOG_STEPS
    if used["mode"] != "dag":
        used["seed"] = None  # only DAG's random labels draw from it
    # Class names are known before loading only for the bundled detectors.
    if used["weights"] is None and isinstance(used["target"], str):
        with contextlib.suppress(FoolError):  # an identity must not raise: the run refuses it
            used["target"] = class_index(synthetic.CLASSES, used["target"], "bundled")
    return used


def run_detect_attack(p: dict[str, Any], out: Path) -> dict[str, Any]:
    """``fool detect attack``: TOG/DAG on one image (see :mod:`fooltools.detection`)."""
    from fooltools.detection.attack_run import attack_file, check, class_index, resolve_image

    p = _detect_applicable(p)
    det = _detector(p["detector"], p["cfg"], p["weights"], p["names"])
    target = None if p["target"] is None else class_index(det.class_names, p["target"], det.name)
    kw = {k: p[k] for k in ("eps", "step_size", "steps", "norm") if p[k] is not None}
    # What only the loaded detector can tell (its classes): one line, as on the CLI.
    check(det, p["mode"], target_class=target, confidence=p["confidence"], **kw)
    report = attack_file(
        det, resolve_image(p["image"], out), out, mode=p["mode"], seed=p["seed"],
        confidence=det.confidence if p["confidence"] is None else p["confidence"],
        target_class=target, **kw,
    )  # fmt: skip
    m = report["metrics"]
    return {
        "model": det.name,
        # As perturb's pgd-linf: L-inf and L2 attacks are rows of their own.
        "method": f"{p['mode']}-{p['norm'] or 'linf'}",
        "class": "-" if target is None else det.class_names[target],
        "source": f"{m['clean_objects']} objects",
        "success": report["success"],
        "linf": m["linf_255"],
        "l2": round(m["l2"] * 255, 3),
        "seconds": m["seconds"],
    }


_DETECTORS: dict[tuple, Any] = {}


def _detector(kind: str, cfg: str | None, weights: str | None, names: str | None):
    # One load (and jit cache) per worker process, as for the classifiers.
    from fooltools.detection.detectors import load_detector, read_class_names

    key = (kind, cfg, weights, names)
    if key not in _DETECTORS:
        class_names = None if names is None else read_class_names(names)
        _DETECTORS[key] = load_detector(kind, cfg=cfg, weights=weights, class_names=class_names)
    return _DETECTORS[key]


def _confidence(value: float | int) -> float | int:
    if not 0 <= value <= 1:  # _check_value has refused NaN
        raise FoolError(f"a detection score threshold is in [0, 1], got {value!r}")
    return value


def _mode(value: str) -> str:
    from fooltools.detection.attacks import MODES

    if value not in MODES:
        raise FoolError(f"unknown attack mode {value!r}; choose from {', '.join(MODES)}")
    return value


def _method(value: str) -> str:
    from fooltools.perturb import METHODS

    # Found by each run, after every other key: "PGD" with an eps was refused as "eps: no
    # run of this spec takes it", the method's case never named.
    if value not in METHODS:
        raise FoolError(f"unknown method {value!r}; choose from {', '.join(METHODS)}")
    return value


def _norm(value: str) -> str:
    if value not in ("linf", "l2"):
        raise FoolError(f"unknown norm {value!r}; choose linf or l2")
    return value


def _positive(value: int) -> int:
    if value < 1:
        raise FoolError(f"expected an integer >= 1, got {value}")
    return value


def _count(least: int) -> Callable[[int], int]:
    """A normaliser refusing a count below ``least`` or past int32 (device counters)."""

    def check(value: int) -> int:
        if not least <= value <= INT32_MAX:
            raise FoolError(f"expected an integer in {least}..{INT32_MAX}, got {value}")
        return value

    return check


def _stop_at(value: float | int) -> float | int:
    if not 0 <= value <= 1:  # _check_value has refused NaN
        raise FoolError(f"a stop is a confidence in [0, 1], got {value!r}")
    return value


def _crop_count(value: int) -> int:
    from fooltools.models import crops

    return crops.check(value, option="it")  # after the key: "fixed.crops: it must be"


def _model_name(value: str) -> str:
    from fooltools.models import model_info

    model_info(value)  # an unknown name, with suggestions; installed or not is the worker's
    return value


def _seed(value: int) -> int:
    # As the CLI's --seed: JAX keys keep a seed's low 32 bits, so seeds 2^32 apart would
    # be one run with two ids and two reports.
    if not 0 <= value <= SEED_MAX:
        raise FoolError(f"a seed is an integer in 0..{SEED_MAX}, got {value}")
    return value


def _encoding(value: str) -> str:
    if value not in ("cppn", "direct"):
        raise FoolError(f"unknown encoding {value!r}; choose cppn or direct")
    return value


def _strategy(value: str) -> str:
    if value not in ("es", "ga"):
        raise FoolError(f"unknown strategy {value!r}; choose es or ga")
    return value


_MODEL = {
    "model": Param((str,), normalise=_model_name),
    # A model's name is its architecture's: a grid over weights files (standard against
    # adversarially trained) would be one row of the summary.
    "weights": Param((str,), path=True, splits=True),
    "seed": Param((int,), default=0, normalise=_seed),
}
_EVOLVE = {
    "encoding": Param((str,), default="cppn", normalise=_encoding),
    "generations": Param((int,), normalise=_count(1), splits=True),
    "population": Param((int,), normalise=_count(2), splits=True),
    "checkpoint_every": Param((int,), default=10, normalise=_positive),
    # No default: a run id leaves out unset parameters, so batches from before it keep theirs.
    "crops": Param((int,), normalise=_crop_count),
    **_MODEL,
}

TASKS: dict[str, TaskKind] = {
    "perturb": TaskKind(
        run_perturb,
        {
            "image": Param((str,), required=True, path=True),
            "target": Param((str, int)),
            "untargeted": Param((bool,), default=False),
            "method": Param((str,), default="pgd", normalise=_method),
            "norm": Param((str,), default="linf", normalise=_norm, only="methods pgd and fgsm"),
            "eps": Param(
                (float, int, str), normalise=_eps, only="methods pgd and fgsm", splits=True
            ),
            "steps": Param((int,), only="every method but fgsm", splits=True),
            **_MODEL,
        },
        _perturb_identity,
        _perturb_check,
    ),
    "evolve": TaskKind(
        run_evolve,
        {
            "class": Param((str, int), required=True),
            "stop_at": Param((float, int), default=0.99, normalise=_stop_at, splits=True),
            "strategy": Param((str,), normalise=_strategy),
            **_EVOLVE,
        },
        _evolve_identity,
        _evolve_check,
    ),
    "map-elites": TaskKind(
        run_map_elites,
        # Its class column is a count ("2 classes"): a grid over class sets of one size
        # needs a row per set.
        {"classes": Param((str, list), default="all", splits=True), **_EVOLVE},
        _map_elites_identity,
        _map_elites_check,
    ),
    "detect-attack": TaskKind(
        run_detect_attack,
        {
            "image": Param((str,), required=True, path=True),
            "mode": Param((str,), required=True, normalise=_mode),
            "detector": Param((str,), default="yolo"),
            "target": Param((str, int), only="mode mislabel"),
            "eps": Param((float, int, str), normalise=_eps, splits=True),
            "step_size": Param((float, int, str), normalise=_eps, splits=True),
            "steps": Param((int,), splits=True),
            "norm": Param((str,), normalise=_norm),
            "confidence": Param((float, int), normalise=_confidence, splits=True),
            # A detector's name holds its weights file's name only: not its directory,
            # nor its cfg.
            "cfg": Param((str,), path=True, only="detector yolo", splits=True),
            "weights": Param((str,), path=True, splits=True),
            "names": Param((str,), path=True, only="your own weights"),
            "seed": Param((int,), default=0, normalise=_seed, only="mode dag"),
        },
        _detect_identity,
        _detect_check,
    ),
}


def one_line(err: BaseException) -> str:
    """An exception as one line: its message, prefixed by its type unless it is a FoolError."""
    text = " ".join(str(err).split())
    return text if isinstance(err, FoolError) and text else f"{type(err).__name__}: {text}"


def _file_params(kind: str, params: dict[str, Any]) -> dict[str, str]:
    """A run's path parameters that name files (not ``sample:``/``synthetic:`` images)."""
    return {
        key: value
        for key, param in TASKS[kind].params.items()
        if param.path and isinstance(value := params.get(key), str)
        if not value.startswith(_NAMED)
    }


def localise(kind: str, params: dict[str, Any], base_dir: str | None) -> dict[str, Any]:
    """Make relative path parameters absolute against ``base_dir`` (the batch's cwd)."""
    if base_dir is None:
        return dict(params)
    files = _file_params(kind, params)
    return {
        **params,
        **{k: os.path.join(base_dir, os.path.expanduser(v)) for k, v in files.items()},
    }


def relative_paths(kind: str, params: dict[str, Any]) -> list[str]:
    """The path parameters of a run that :func:`localise` reads against the batch's cwd."""
    files = _file_params(kind, params).values()
    return [v for v in files if not os.path.isabs(os.path.expanduser(v))]


def write_result(out: Path, result: dict[str, Any]) -> None:
    """Write ``out/result.json`` atomically (the run's "finished" marker)."""
    from fooltools.io import write_bytes_atomic

    write_bytes_atomic(out / RESULT, json.dumps(result, indent=2).encode())


def run_one(
    kind: str,
    params: dict[str, Any],
    out_dir: str | os.PathLike[str],
    base_dir: str | None = None,
) -> dict[str, Any]:
    """Run one task and write its ``result.json`` last; never raises for a failing task.

    Any exception from the task is recorded (status ``"failed"`` and the one-line error;
    for anything but a FoolError the traceback goes to ``error.txt``) so the other runs
    of a batch go on. KeyboardInterrupt is not caught: the run stays unfinished.

    Args:
        kind: A key of :data:`TASKS`.
        params: The run's resolved parameters (as :meth:`Spec.runs` gives them).
        out_dir: The run's directory (created).
        base_dir: Directory that relative path parameters are relative to.

    Returns:
        The result dict: ``id``, ``kind``, ``params``, ``status`` ("ok" or "failed"),
        ``error`` (None or one line), ``metrics`` (see :data:`METRICS`), ``seconds``,
        ``host`` and ``pid`` (of the process that ran it).
    """
    from fooltools.experiments.spec import run_id

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # A re-run (of a failed run) is unfinished until it writes a new result.
    (out / RESULT).unlink(missing_ok=True)
    (out / ERROR_LOG).unlink(missing_ok=True)
    result: dict[str, Any] = {"id": run_id(kind, params), "kind": kind, "params": params}
    t0 = time.perf_counter()
    try:
        metrics = TASKS[kind].run(localise(kind, params, base_dir), out)
        result.update(status="ok", error=None, metrics=metrics)
    except Exception as err:  # failure isolation: record it, let the batch go on
        result.update(status="failed", error=one_line(err), metrics={})
        if not isinstance(err, FoolError):
            (out / ERROR_LOG).write_text(traceback.format_exc())
    result["seconds"] = round(time.perf_counter() - t0, 3)
    result["host"], result["pid"] = platform.node(), os.getpid()
    write_result(out, result)
    return result
