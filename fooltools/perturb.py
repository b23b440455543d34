"""``fool perturb``: attack one image with one method and write a self-describing run.

The attack runs on the image at its own resolution (preprocessing is inside the
differentiated model), and everything the report says — success, confidences,
distortions — is measured on the PNG as written and read back from disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import json
import os
import platform
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fooltools import __version__, attacks, io, words
from fooltools.attacks.pgd import MAX_EPS
from fooltools.errors import FoolError, one_line
from fooltools.models.base import Classifier

METHODS = ("pgd", "fgsm", "szegedy", "lbfgs", "cw")
BUDGETED = ("pgd", "fgsm")  # the methods that take --eps and --norm
SEARCH_STEPS = 5  # values of c that lbfgs and cw try, each a round of ``steps``
DEFAULT_STEPS = {"pgd": 40, "fgsm": 1, "szegedy": 300, "lbfgs": 20, "cw": 100}
DEFAULT_EPS = {"linf": 8 / 255, "l2": 3.0}
REPORT = "report.json"


@dataclasses.dataclass(frozen=True)
class PerturbConfig:
    """What to run.

    Attributes:
        method: One of :data:`METHODS`.
        target: Class index to reach, or None for an untargeted attack.
        norm: ``"linf"`` or ``"l2"``, the budget's geometry (PGD/FGSM only); None: linf.
        eps: Budget radius in [0, 1] pixel units (PGD/FGSM only); None: the default.
        steps: Iterations (per search round for lbfgs/cw; not FGSM, one step); None: the
            method's default.
        seed: PRNG seed (random start of PGD).
    """

    method: str = "pgd"
    target: int | None = None
    norm: str | None = None
    eps: float | None = None
    steps: int | None = None
    seed: int = 0

    def applicable(self) -> PerturbConfig:
        """A copy without what its method does not take (a budget, or fgsm's steps).

        Budgets go to pgd and fgsm only, and fgsm is one step. For a batch grid that fixes
        a budget or steps over several methods; :meth:`resolved` refuses what this drops,
        since a command line that sets it means something else.
        """
        budgeted = self.method in BUDGETED
        return dataclasses.replace(
            self,
            norm=self.norm if budgeted else None,
            eps=self.eps if budgeted else None,
            steps=None if self.method == "fgsm" else self.steps,
        )

    @property
    def label(self) -> str:
        """``method norm`` (``pgd linf``), or the method alone for one without a budget."""
        return " ".join(filter(None, (self.method, self.norm)))

    def resolved(self) -> PerturbConfig:
        """A copy with defaults filled in, after validating every field.

        A method without a budget (szegedy, lbfgs, cw) resolves to ``norm`` and ``eps``
        None, so that its report claims no budget it never had.

        Raises:
            FoolError: An unknown method or norm, eps outside [1/255, 1] (L-inf) or
                [1/255, 1e6] (L2), steps < 1 or more than the attack's loop can count (see
                :data:`fooltools.attacks.base.MAX_STEPS`), a budget given to a method
                without one, or steps given to FGSM.
        """
        if self.method not in METHODS:
            raise FoolError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.method not in BUDGETED:
            # Silently ignored, a budget would be read into a result that does not respect it.
            if self.eps is not None or self.norm is not None:
                raise FoolError(
                    f"eps and norm set the budget of pgd and fgsm; {self.method} looks for "
                    "the smallest perturbation and takes none"
                )
            norm = eps = None
        else:
            norm = self.norm or "linf"
            if norm not in DEFAULT_EPS:
                raise FoolError(f"unknown norm {norm!r}; choose linf or l2")
            eps = DEFAULT_EPS[norm] if self.eps is None else self.eps
            if norm == "linf" and not 0 < eps <= 1:
                raise FoolError(f"eps must be in (0, 1] (pixel values are in [0, 1]), got {eps:g}")
            if norm == "l2" and not 0 < eps <= MAX_EPS:
                # Finite and bounded: an infinite budget wrote NaN images after the attack.
                raise FoolError(f"eps must be in (0, {MAX_EPS:g}] for l2, got {eps:g}")
            if eps < 1 / 255:
                # The attack works on the 8-bit grid of the PNG it writes: no pixel can move
                # a whole level, and the run wrote the image unchanged as a failure.
                raise FoolError(
                    f"eps must be at least 1/255, one 8-bit level (the adversarial image is "
                    f"an 8-bit PNG), got {eps:g} ({eps * 255:g}/255)"
                )
        if self.method == "fgsm" and self.steps not in (None, 1):
            raise FoolError("fgsm is a single step; steps are for the iterative methods")
        steps = DEFAULT_STEPS[self.method] if self.steps is None else self.steps
        if steps < 1:
            raise FoolError(f"steps must be >= 1, got {steps}")
        rounds = _rounds(self.method)
        if steps > attacks.base.MAX_STEPS // rounds:
            per = f" for {self.method} ({rounds} search rounds of steps each)" * (rounds > 1)
            raise FoolError(
                f"steps must be at most {attacks.base.MAX_STEPS // rounds}{per}, got {steps}"
            )
        return dataclasses.replace(self, norm=norm, eps=eps, steps=steps)


def build_attack(clf: Classifier, cfg: PerturbConfig) -> attacks.base.Run:
    """The attack ``run(key, x, target, *, progress=None)`` for a resolved config."""
    targeted = cfg.target is not None
    if cfg.method == "pgd":
        return attacks.pgd(
            clf.logits, clf.params, eps=cfg.eps, norm=cfg.norm, steps=cfg.steps, targeted=targeted
        )
    if cfg.method == "fgsm":
        return attacks.fgsm(clf.logits, clf.params, eps=cfg.eps, norm=cfg.norm, targeted=targeted)
    if cfg.method == "szegedy":
        return attacks.szegedy(clf.logits, clf.params, steps=cfg.steps, targeted=targeted)
    rounds = {"steps": cfg.steps, "search_steps": SEARCH_STEPS, "targeted": targeted}
    if cfg.method == "lbfgs":
        return attacks.lbfgs(clf.logits, clf.params, **rounds)
    return attacks.cw(clf.logits, clf.params, **rounds)


# Per classifier and attack (``cfg`` without its target and seed), so that a batch of
# images compiles each attack once per image shape.
_cached_attack = functools.lru_cache(maxsize=16)(build_attack)


def _rounds(method: str) -> int:
    """Rounds of ``steps`` a method runs: lbfgs and cw search over their constant."""
    return SEARCH_STEPS if method in ("lbfgs", "cw") else 1


def total_steps(cfg: PerturbConfig) -> int:
    """Gradient iterations the progress bar counts for a resolved config."""
    return cfg.steps * _rounds(cfg.method)


def default_out_dir(root: str | os.PathLike[str] = "runs", kind: str = "perturb") -> Path:
    """Create and return ``runs/<kind>-<timestamp>``, with a numeric suffix if that exists.

    The directory is created here, empty, and a name another process created first is
    passed over: two commands started in the same second (``fool perturb a.jpg & fool
    perturb b.jpg``) each found the name free and both wrote their run into it, the
    second over the first. :func:`release_out_dirs` removes it again while it is empty
    (the ``fool`` command calls it as it exits, so a failed run leaves none behind).

    Raises:
        FoolError: ``root`` cannot be created or written.
    """
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    io.make_dir(root)
    n = 1
    while True:
        out = Path(root) / (f"{kind}-{stamp}" + (f"-{n}" if n > 1 else ""))
        try:
            out.mkdir()  # atomic: exactly one process creates a given name
        except FileExistsError:
            n += 1
            continue
        except OSError as err:
            raise FoolError(f"cannot create directory {out}: {one_line(err)}") from err
        _MADE.append(out)
        return out


_MADE: list[Path] = []  # directories default_out_dir made, for release_out_dirs


# The directories claim_out_dir holds locked: (st_dev, st_ino) -> descriptor.
_CLAIMS: dict[tuple[int, int], int] = {}


def claim_out_dir(out_dir: str | os.PathLike[str]) -> Path:
    """Hold the run directory ``out_dir`` for this command (created if missing).

    Another ``fool`` command claiming it before :func:`release_out_dirs` is refused: two
    commands given one ``--out`` each passed the checks for an earlier run (they run before
    the first file is written) and wrote their files over each other's, one's history
    and the other's images. The claim is an advisory ``flock`` on the directory, which the
    kernel drops when the process ends, killed or not; on a file system without locks
    (some network mounts) the directory is used unguarded, as before. Claiming a
    directory this process holds already does nothing.

    Raises:
        FoolError: Another command holds it, or it cannot be a directory we write into:
            its nearest existing ancestor (or itself) is a file, or not writable, or it
            cannot be created.
    """
    import fcntl

    path = Path(out_dir)
    # Found only when the first file was written, after the model had loaded and the whole
    # attack had run (minutes for cw on a large photo).
    existing = path
    # os.path's, not Path's: a name too long for the file system is "missing", not OSError.
    while not os.path.exists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise FoolError(f"cannot create directory {out_dir}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise FoolError(f"cannot create directory {out_dir}: {existing} is not writable")
    made = not os.path.exists(path)
    io.make_dir(path)  # a name too long is its one-line error
    if made:
        _MADE.append(path)  # a command that then fails leaves no empty directory behind
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return path
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) in _CLAIMS:
        os.close(fd)  # a second flock of ours would refuse ourselves
        return path
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FoolError(
            f"another fool command is writing into {out_dir}: let it finish, or choose "
            "another --out"
        ) from None
    except OSError:
        os.close(fd)
        return path
    _CLAIMS[st.st_dev, st.st_ino] = fd
    return path


def release_out_dirs() -> None:
    """Release the claimed directories; remove the ones made here that are still empty.

    Made here: by :func:`default_out_dir`, or a claimed ``--out``. A run that failed
    before writing anything left one; a run's own files keep it.
    """
    while _CLAIMS:
        os.close(_CLAIMS.popitem()[1])  # closing the last descriptor drops the flock
    while _MADE:
        with contextlib.suppress(OSError):
            _MADE.pop().rmdir()  # only ever removes an empty directory


# The images perturb_file writes into its run directory (an input there under one of
# these names is refused: it would be written over).
ORIGINAL, ADVERSARIAL, PERTURBATION = "original.png", "adversarial.png", "perturbation.png"
OUTPUTS = (ORIGINAL, ADVERSARIAL, PERTURBATION)


def check_out_dir(
    out_dir: str | os.PathLike[str],
    inputs: Iterable[str | os.PathLike[str]] = (),
    writes: Callable[[str], bool] = lambda name: False,
) -> None:
    """Refuse a run directory that already holds a run, before any work is done.

    :func:`perturb_file` writes its files one after another: into an earlier run's
    directory it would overwrite that run's results, and a run that then failed would
    leave a mix of the two. ``fool perturb`` checks its ``--out`` with this; a batch
    re-running one of its own runs (``fool run --resume``) writes over it on purpose.

    Args:
        out_dir: The ``--out`` given.
        inputs: The command's input files: one in ``out_dir`` under a name the run writes
            (``fool perturb runs/x/adversarial.png --out runs/x``) would be replaced by
            the run's output, and its report would name the output as its input.
        writes: Whether the run writes a file of this name into ``out_dir``.

    The directory is created and claimed (:func:`claim_out_dir`) for the rest of the
    command.

    Raises:
        FoolError: ``out_dir`` holds a ``report.json``, or an input the run would write
            over, or :func:`claim_out_dir` refuses it.
    """
    # Held from here on: the checks below then hold until the run has written its files.
    path = claim_out_dir(out_dir)
    if (path / REPORT).exists():
        raise FoolError(f"{out_dir} already holds a run ({REPORT}); choose another --out")
    for given in map(Path, inputs):
        target = path / given.name
        # samefile: the photo named through a link, or as dir/../dir/photo.png.
        if writes(given.name) and given.is_file() and target.is_file():
            if os.path.samefile(given, target):
                raise FoolError(
                    f"{given} is in --out {out_dir} and the run writes its own {given.name} "
                    "there (it would replace your photo): choose another --out"
                )


def _top(clf: Classifier, logits: np.ndarray, k: int = 5) -> list[dict[str, Any]]:
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits)))
    idx = np.argsort(-probs, kind="stable")[:k]
    return [
        {"index": int(i), "label": clf.labels.name(int(i)), "prob": float(probs[i])} for i in idx
    ]


def versions() -> dict[str, str]:
    """Versions of the packages a result depends on, for reports."""
    import flax
    import optax

    return {
        "fooltools": __version__,
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
    }


def perturb_file(
    clf: Classifier,
    image: str | os.PathLike[str],
    cfg: PerturbConfig,
    out_dir: str | os.PathLike[str],
    *,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Attack one image file and write the run directory.

    Writes ``adversarial.png`` (at the input's size), ``original.png`` (the input as the
    attack saw it, 8-bit), ``perturbation.png`` (the difference, amplified to be visible),
    ``report.json`` and ``index.html``. Every file is written atomically.

    Args:
        clf: The classifier to fool.
        image: Path of the photo.
        cfg: What to run (validated here).
        out_dir: The run directory (created).
        progress: Optional ``progress(step)``, called on the host with the 0-based index
            of the last finished iteration as the attack goes (see
            :func:`fooltools.attacks.base.run_loop`); None: one device call, no reports.

    Returns:
        The report dict (also in ``report.json``).

    Raises:
        FoolError: Invalid config or unreadable image.
    """
    from fooltools import gallery

    cfg = cfg.resolved()
    x = io.quantize(jnp.asarray(io.read_image(image)))[None]
    source_logits = np.asarray(jax.jit(clf.logits)(clf.params, x))[0]
    source = int(source_logits.argmax())
    target = source if cfg.target is None else cfg.target
    out = Path(out_dir)
    t0 = time.perf_counter()
    if cfg.target is not None and source == cfg.target:
        adv, note, steps = x[0], f"already classified as {clf.labels.name(target)}", 0
    else:
        # Target and seed are arguments of the compiled attack: leave them out of the key
        # (but keep whether it is targeted), so a batch of images compiles once per shape.
        key = dataclasses.replace(cfg, target=None if cfg.target is None else 0, seed=0)
        run = _cached_attack(clf, key)
        res = run(jax.random.key(cfg.seed), x, jnp.asarray([target]), progress=progress)
        adv, note, steps = jax.block_until_ready(res.x[0]), None, total_steps(cfg)
    adv = np.asarray(adv)
    seconds = time.perf_counter() - t0

    # Judge the file, not the tensor: write, read back, classify what was read.
    io.write_png(out / ORIGINAL, x[0])
    written = io.read_image(io.write_png(out / ADVERSARIAL, adv))
    diff = written - np.asarray(x[0])
    gain = 0.5 / max(float(np.abs(diff).max()), 1 / 255)
    io.write_png(out / PERTURBATION, np.clip(0.5 + gain * diff, 0, 1))
    adv_logits = np.asarray(jax.jit(clf.logits)(clf.params, jnp.asarray(written)[None]))[0]
    top1 = int(adv_logits.argmax())
    targeted = cfg.target is not None
    success = top1 == target if targeted else top1 != source
    probs = np.asarray(jax.nn.softmax(jnp.asarray(adv_logits)))
    src_probs = np.asarray(jax.nn.softmax(jnp.asarray(source_logits)))
    # Distortions of the files themselves, in whole 8-bit levels.
    d255 = np.abs(io.to_uint8(written).astype(np.int32) - io.to_uint8(x[0]).astype(np.int32))
    d255 = d255.reshape(-1).astype(np.float64)
    report = {
        "kind": "perturb",
        "title": f"{Path(image).name} -> "
        + (clf.labels.name(target) if cfg.target is not None else "untargeted")
        + f" ({cfg.label})",
        "success": bool(success),
        "image": str(image),
        "size": list(written.shape[:2]),
        **clf.record,  # weights None: the registry\'s own
        "method": cfg.method,
        "norm": cfg.norm,
        "eps": cfg.eps,
        "eps_255": None if cfg.eps is None else cfg.eps * 255,
        "targeted": targeted,
        "source": {
            "index": source,
            "label": clf.labels.name(source),
            "confidence": float(src_probs[source]),
        },
        # An untargeted run has no target: it stood for the source class here, and the
        # page showed the source's confidence as a "target confidence".
        "target": {"index": target, "label": clf.labels.name(target)} if targeted else None,
        "final": {
            "index": top1,
            "label": clf.labels.name(top1),
            "confidence": float(probs[top1]),
            "target_confidence": float(probs[target]) if targeted else None,
            "source_confidence": float(probs[source]),
        },
        "distortion_255": {
            "linf": float(d255.max()),
            "l2": float(np.sqrt((d255**2).sum())),
            "l0": int((d255 > 0.5).sum()),
        },
        "steps": steps,
        "seconds": round(seconds, 3),
        "seed": cfg.seed,
        "note": note,
        "versions": versions(),
        "images": [
            {
                "file": ORIGINAL,
                "caption": f"original: {clf.labels.name(source)} {100 * src_probs[source]:.1f}%",
                "top": _top(clf, source_logits),
            },
            {"file": PERTURBATION, "caption": f"perturbation x{gain:.0f}"},
            {
                "file": ADVERSARIAL,
                "caption": f"adversarial: {clf.labels.name(top1)} {100 * probs[top1]:.1f}%",
                "top": _top(clf, adv_logits),
            },
        ],
    }
    aimed = ("target", target) if targeted else ("source", source)
    report["metrics"] = {
        "success": report["success"],
        f"{aimed[0]} confidence": words.figure(probs[aimed[1]]),
        "L-inf (0-255)": round(report["distortion_255"]["linf"], 2),
        "L2 (0-255)": round(report["distortion_255"]["l2"], 2),
        "L0 (values)": report["distortion_255"]["l0"],
        "steps": steps,
        "seconds": report["seconds"],
    }
    io.write_bytes_atomic(out / REPORT, json.dumps(report, indent=2).encode())
    gallery.write_run_page(out)
    return report
