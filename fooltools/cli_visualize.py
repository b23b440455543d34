"""``fool invert``, ``visualize``, ``dream``, ``style``, ``layers``: optimise a network's input.

A thin click layer over :mod:`fooltools.visualize` (understanding a network by
optimising its input).

The commands are collected in :data:`COMMANDS`; ``fooltools.cli`` registers them on the
``fool`` group. Every option is checked before the model is loaded, and every mistake a
user can make (an unknown layer or class, a non-positive weight) is a
:class:`~fooltools.errors.FoolError`: one line on stderr, exit status 2.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from fooltools.cli import IMAGE, _model_options, _run_options, resolve_image
from fooltools.errors import FoolError, one_line
from fooltools.limits import INT32_MAX

# Defaults shown by --help; the library's own defaults, repeated here so that importing
# this module (to build the CLI) does not import JAX.
_INV = {"steps": 300, "starts": 3, "lr": 0.1, "tv": 1.0, "alpha": 1e-4}
_VIZ = {"steps": 100, "lr": 0.05, "tv": 50.0}
_DREAM = {"steps": 20, "lr": 0.01, "octaves": 3, "scale": 1.4, "size": 384}
_STYLE = {"steps": 300, "lr": 0.02, "size": 256, "content": 1.0, "style": 10.0, "tv": 0.3}


def check_positive(**options: float | None) -> None:
    """Raise FoolError for the first option that is given and not a finite number > 0.

    Keyword names are option names with ``_`` for ``-`` (``tv_weight`` -> ``--tv-weight``).
    """
    for name, value in options.items():
        if value is not None and not (math.isfinite(value) and value > 0):
            flag = "--" + name.replace("_", "-")
            raise FoolError(f"{flag} must be > 0, got {value:g}")


def _at_least(flag: str, value: int | None, low: int) -> None:
    if value is not None and value < low:
        raise FoolError(f"{flag} must be >= {low}, got {value}")


MAX_SNAPSHOTS = 100  # cells of the progress strip, each kept in memory until it is drawn


def _check_every(every: int | None, steps: int, runs: int = 1) -> None:
    """Refuse an --every that takes more than MAX_SNAPSHOTS snapshots over ``runs`` runs.

    ``--every 1`` over 100,000 steps kept 100,000 images for a strip no viewer opens
    (tens of GB at 224 x 224, and a PNG past Pillow's size limit).
    """
    _at_least("--every", every, 1)
    taken = 0 if every is None else runs * -(-steps // every)
    if taken > MAX_SNAPSHOTS and runs > MAX_SNAPSHOTS:
        # Each run (octave) ends in a snapshot, so no period helps: "use --every N" named
        # one that was refused in turn.
        raise FoolError(
            f"--every {every} takes {taken} snapshots; the progress strip holds at most "
            f"{MAX_SNAPSHOTS}, and each of the {runs} octaves ends in one: use "
            f"--octaves {MAX_SNAPSHOTS} or fewer"
        )
    if taken > MAX_SNAPSHOTS:
        least = -(-steps // max(MAX_SNAPSHOTS // runs, 1))
        raise FoolError(
            f"--every {every} takes {taken} snapshots; the progress strip holds at most "
            f"{MAX_SNAPSHOTS}: use --every {least} or more"
        )


def _dream_every(steps: int, octaves: int) -> int:
    """The default ``--every`` of ``fool dream``: steps/2, or what keeps the strip whole.

    The default period (steps/2, two snapshots an octave) over more than 50 octaves took
    more snapshots than the strip holds, with nothing refused: the frames of thousands of
    octaves (a scale near 1) were all kept in memory. Past 50 octaves the default is the
    shortest period that fits; past :data:`MAX_SNAPSHOTS` octaves none does.
    """
    if octaves > MAX_SNAPSHOTS:
        raise FoolError(
            f"--octaves {octaves}: each octave ends in a snapshot of the progress strip, "
            f"which holds at most {MAX_SNAPSHOTS}: use --octaves {MAX_SNAPSHOTS} or fewer"
        )
    from fooltools.visualize.deepdream import default_every

    every = default_every(steps)
    if octaves * -(-steps // every) > MAX_SNAPSHOTS:
        every = -(-steps // (MAX_SNAPSHOTS // octaves))
    return every


def _check_jitter(jitter: int | None, side: int) -> None:
    """Raise FoolError unless ``--jitter`` is at most ``side``, the image's longer side.

    The shift wraps around (a roll), so one by the side or more does nothing a smaller
    one does not; ``_at_least`` has already refused negative values.
    """
    if jitter is not None and jitter > side:
        raise FoolError(
            f"--jitter must be at most the image side, {side} pixels (a shift wraps around, "
            f"so a larger one does nothing more), got {jitter}"
        )


def _check_side(size: int | None) -> None:
    """Raise FoolError unless ``--size``, a square image's side, is 16 up to what is saved.

    Each result is written as a PNG and read back (:func:`fooltools.visualize.run.save`),
    and :func:`fooltools.io.read_image` refuses images over twice Pillow's
    ``MAX_IMAGE_PIXELS`` (a 13377-pixel square by default): a larger side could only fail
    once the optimisation was done, and far larger ones (3e9, 1e20) ended in a traceback
    from JAX, or in an abort, instead of this line.
    """
    from PIL import Image

    _at_least("--size", size, 16)
    # Pillow's limit can be switched off (None): then int32 pixel counts bound it.
    pixels = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else INT32_MAX
    largest = math.isqrt(pixels)
    if size is not None and size > largest:
        raise FoolError(
            f"--size must be at most {largest} (the largest square image fooltools reads "
            f"back, {pixels} pixels), got {size}"
        )


def _check_steps(steps: int) -> None:
    """Raise FoolError unless ``--steps`` is at least 1 and fits an int32 loop counter."""
    _at_least("--steps", steps, 1)
    if steps > INT32_MAX:
        raise FoolError(f"--steps must be at most {INT32_MAX}, got {steps}")


def _model(model_name: str | None, weights: str | None) -> Any:
    from fooltools.models import DEFAULT_MODEL, load_model

    return load_model(model_name or DEFAULT_MODEL, weights=weights)


def _check_out(
    out_dir: str | None, images: tuple[str, ...] = (), writes: Callable[[str], bool] = bool
) -> None:
    """Refuse an ``--out`` that holds a run, or an input the run would write over.

    The commands write their files one after another, so into an earlier run's directory
    (any command's) they overwrote its report and images and left its other files beside
    the new ones. An input photo in ``--out`` named as an output (``fool style
    content.png style.png --out .``) was replaced by its shrunk copy. Both are checked
    before the model is loaded.

    Args:
        out_dir: The ``--out`` given, or None for a new default directory.
        images: The command's image arguments (paths or ``sample:NAME``).
        writes: Whether the run writes a file of this name into ``out_dir``.
    """
    from fooltools.perturb import check_out_dir

    if out_dir:
        check_out_dir(out_dir, [resolve_image(arg) for arg in images], writes)


def _out(out_dir: str | None, kind: str) -> Path:
    """The run directory once there are results: ``--out``, or a new default one.

    A default directory is created here, when the results are ready to be written, so
    that a command that fails before leaves no empty one behind.
    """
    from fooltools.perturb import default_out_dir

    return Path(out_dir) if out_dir else default_out_dir(kind=kind)


def _image(arg: str) -> tuple[Path, Any]:
    from fooltools import io

    path = resolve_image(arg)
    return path, io.read_image(path)


def _run(total: int, label: str, work: Callable[[Callable[[int], None]], Any]) -> tuple[Any, float]:
    """Run ``work(progress)`` under a progress bar; return its result and the seconds."""
    from fooltools.progress import Progress

    bar = Progress(total, label=label)
    t0 = time.perf_counter()
    try:
        result = work(bar)
    finally:
        bar.close()
    return result, round(time.perf_counter() - t0, 3)


def _layer_option(help_text: str, **kwargs: Any) -> Callable:
    return click.option("--layer", "layer_names", help=help_text, **kwargs)


def _one_layer(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> str | None:
    """The value of a layer option given at most once; a repeated one is refused.

    Click kept the last one without a word: ``fool dream --layer block3 --layer block8``
    dreamed on block8 alone, though ``fool invert`` takes several and its ``--layer`` is
    repeated just so; ``fool style --style-layers stem --style-layers block1`` matched
    block1's style only.
    """
    flag = param.opts[0]
    if len(value) > 1:
        several = " (comma-separated for several)" if flag == "--style-layers" else ""
        raise FoolError(
            f"fool {ctx.command.name} takes one {flag}{several}, got {len(value)}: "
            f"{', '.join(value)}"
        )
    return value[0] if value else None


def _every(default: str) -> Callable:
    return click.option(
        "--every", type=int, help=f"Progress-strip period in steps [default: {default}]."
    )


@click.command(name="invert")
@click.argument("image", type=IMAGE)
@_layer_option(
    "Layer to invert (`fool layers` lists them); repeat for several.",
    multiple=True,
    required=True,
)
@click.option(
    "--starts",
    type=int,
    default=_INV["starts"],
    show_default=True,
    help="Random starts per layer (the reconstruction is not unique).",
)
@click.option("--steps", type=int, default=_INV["steps"], show_default=True)
@click.option("--size", type=int, help="Side of the working image [default: model input].")
@click.option(
    "--tv-weight",
    type=float,
    default=_INV["tv"],
    show_default=True,
    help="Weight of the total-variation (smoothness) prior.",
)
@click.option(
    "--alpha-weight",
    type=float,
    default=_INV["alpha"],
    show_default=True,
    help="Weight of the L-alpha bound on pixel values.",
)
@click.option("--beta", type=float, default=2.0, show_default=True, help="TV exponent (1 to 100).")
@click.option("--lr", type=float, default=_INV["lr"], show_default=True)
@_every("steps/8")
@_model_options
@_run_options("invert")
def invert_cmd(
    image: str, layer_names: tuple[str, ...], starts: int, steps: int, size: int | None,
    tv_weight: float, alpha_weight: float, beta: float, lr: float, every: int | None,
    model_name: str | None, weights: str | None, seed: int, out_dir: str | None,
) -> None:  # fmt: skip
    """Reconstruct IMAGE from its features at --layer (Mahendran & Vedaldi 2015).

    Writes original.png, reconstruction-*.png (one per layer and random start),
    progress.png, report.json and index.html. The report gives each reconstruction's
    feature distance to the photo's as a fraction of a random image's. An --out that
    already holds a run is refused.
    """
    check_positive(tv_weight=tv_weight, alpha_weight=alpha_weight, lr=lr)
    _at_least("--starts", starts, 1)
    if starts > INT32_MAX:  # a batch axis past int32 was a TypeError traceback from JAX
        raise FoolError(f"--starts must be at most {INT32_MAX}, got {starts}")
    _check_steps(steps)
    _check_side(size)
    _check_every(every, steps)
    import jax

    from fooltools.visualize import inversion, layers, run

    if not 1 <= beta <= inversion.MAX_EXPONENT:  # also refuses NaN
        raise FoolError(f"--beta must be in [1, {inversion.MAX_EXPONENT:g}], got {beta:g}")

    _check_out(
        out_dir,
        (image,),
        lambda name: name in (run.ORIGINAL, run.STRIP) or name.startswith(run.RECONSTRUCTION),
    )
    clf = _model(model_name, weights)
    # Each layer once, in the order given (a repeated --layer would overwrite its files).
    names = list(dict.fromkeys(layers.check_layer(clf, n, option="--layer") for n in layer_names))
    path, photo = _image(image)
    settings = {
        "layers": names, "starts": starts, "steps": steps, "size": size, "seed": seed,
        "tv_weight": tv_weight, "alpha_weight": alpha_weight, "beta": beta, "lr": lr,
    }  # fmt: skip

    def work(progress):
        return inversion.invert(
            jax.random.key(seed), clf, photo, layer=names, starts=starts, steps=steps,
            size=size, tv_weight=tv_weight, alpha_weight=alpha_weight, beta=beta, lr=lr,
            every=every, progress=progress,
        )  # fmt: skip

    invs, seconds = _run(steps, f"invert {path.name}", work)
    out = _out(out_dir, "invert")
    settings["seconds"] = seconds
    run.write_inversion(out, clf, invs, source=path.name, settings=settings)
    for inv in invs:
        click.echo(
            f"{inv.layer}: feature distance {100 * inv.ratio.max():.1f}% of a random image's "
            f"(best start {100 * inv.ratio.min():.1f}%)"
        )
    click.echo(f"open {out / 'index.html'}")


@click.command(name="visualize")
@click.option(
    "--class",
    "classes",
    multiple=True,
    help="Class to show: name, synonym, WordNet id or index; repeat for several.",
)
@_layer_option(
    "With --channel: the layer whose channel to drive (`fool layers`; not logits: --class).",
    multiple=True,
    callback=_one_layer,
)
@click.option("--channel", "channels", type=int, multiple=True, help="Channel index of --layer.")
@click.option("--steps", type=int, default=_VIZ["steps"], show_default=True)
@click.option("--size", type=int, help="Side of the images [default: model input].")
@click.option(
    "--tv-weight",
    type=float,
    default=_VIZ["tv"],
    show_default=True,
    help="Weight of the total-variation (smoothness) prior.",
)
@click.option(
    "--jitter", type=int, help="Random shift per step in pixels, <= size [default: size/56]."
)
@click.option("--lr", type=float, default=_VIZ["lr"], show_default=True)
@_every("steps/8")
@_model_options
@_run_options("visualize")
def visualize_cmd(
    classes: tuple[str, ...], layer_names: str | None, channels: tuple[int, ...], steps: int,
    size: int | None, tv_weight: float, jitter: int | None, lr: float, every: int | None,
    model_name: str | None, weights: str | None, seed: int, out_dir: str | None,
) -> None:  # fmt: skip
    """Paint, from noise, what the model takes for --class (or what fires --channel).

    Writes one PNG per class or channel, progress.png, report.json and index.html; the
    confidences reported are the model's on the PNG files. An --out that already holds
    a run is refused.
    """
    if bool(classes) == bool(channels):
        raise FoolError("give --class NAME (one or more), or --layer NAME with --channel N")
    if classes and layer_names:
        raise FoolError("--layer goes with --channel; a class visualisation uses the logits")
    if channels and not layer_names:
        raise FoolError("--channel needs --layer NAME (`fool layers` lists them)")
    if channels and layer_names.strip() == "logits":  # check_layer ignores the spaces
        # The library takes layer "logits" for the class objective (log-softmax), so a
        # logit "channel" would silently be a class visualisation: say so instead.
        use = " ".join(f"--class {c}" for c in channels)
        raise FoolError(
            f"--layer logits with --channel is a class visualisation: use {use} (it "
            "maximises the class's log-probability)"
        )
    check_positive(tv_weight=tv_weight, lr=lr)
    _check_steps(steps)
    _check_side(size)
    _at_least("--jitter", jitter, 0)
    _check_every(every, steps)
    import jax

    from fooltools.labels import imagenet
    from fooltools.visualize import classviz, layers, run

    targets = [imagenet().lookup(c) for c in classes]  # unknown names fail before loading
    _check_out(out_dir)
    clf = _model(model_name, weights)
    _check_jitter(jitter, size or max(clf.info.input_size))
    layer = "logits"
    if channels:
        layer = layers.check_layer(clf, layer_names, option="--layer")
        width = layers.layer_shapes(clf)[layer][-1]
        for c in channels:
            if not 0 <= c < width:
                raise FoolError(
                    f"--channel {c} is out of range: {layer} has channels 0..{width - 1}"
                )
        targets = list(channels)
    settings = {
        "targets": targets, "layer": layer, "steps": steps, "size": size, "seed": seed,
        "tv_weight": tv_weight, "jitter": jitter, "lr": lr,
    }  # fmt: skip

    def work(progress):
        return classviz.visualize(
            jax.random.key(seed), clf, targets, layer=layer, steps=steps, size=size,
            tv_weight=tv_weight, jitter=jitter, lr=lr, every=every, progress=progress,
        )  # fmt: skip

    viz, seconds = _run(steps, "visualize", work)
    out = _out(out_dir, "visualize")
    settings["seconds"] = seconds
    report = run.write_classviz(out, clf, viz, settings=settings)
    for name, panel in zip(report["names"], report["images"], strict=False):
        click.echo(f"{name}: {panel['caption'].split(': ', 1)[-1]}")
    click.echo(f"open {out / 'index.html'}")


@click.command(name="dream")
@click.argument("image", type=IMAGE)
@_layer_option(
    "Layer whose activations to amplify (`fool layers`).",
    required=True,
    multiple=True,
    callback=_one_layer,
)
@click.option("--octaves", type=int, default=_DREAM["octaves"], show_default=True)
@click.option("--octave-scale", type=float, default=_DREAM["scale"], show_default=True)
@click.option(
    "--steps", type=int, default=_DREAM["steps"], show_default=True, help="Steps per octave."
)
@click.option(
    "--size",
    type=int,
    default=_DREAM["size"],
    show_default=True,
    help="Longest side of the working image (the photo is shrunk to it).",
)
@click.option(
    "--lr", type=float, default=_DREAM["lr"], show_default=True, help="Mean pixel change per step."
)
@click.option(
    "--jitter",
    type=int,
    help="Random shift per step in pixels, <= the image side [default: octave side/16].",
)
@_every("steps/2 within each octave, longer past 50 octaves")
@_model_options
@_run_options("dream")
def dream_cmd(
    image: str, layer_names: str, octaves: int, octave_scale: float, steps: int, size: int,
    lr: float, jitter: int | None, every: int | None, model_name: str | None,
    weights: str | None, seed: int, out_dir: str | None,
) -> None:  # fmt: skip
    """Deep Dream: amplify what --layer sees in IMAGE, over several octaves.

    Writes original.png, dream.png, progress.png, report.json and index.html. An --out
    that already holds a run is refused.
    """
    check_positive(lr=lr)
    if not (math.isfinite(octave_scale) and octave_scale > 1):  # inf is not JSON
        raise FoolError(f"--octave-scale must be a finite number > 1, got {octave_scale:g}")
    _at_least("--octaves", octaves, 1)
    _check_steps(steps)
    _at_least("--size", size, 16)
    _at_least("--jitter", jitter, 0)
    _check_every(every, steps, octaves)
    import jax

    from fooltools.visualize import common, deepdream, layers, run

    _check_out(out_dir, (image,), lambda name: name in (run.ORIGINAL, run.DREAM, run.STRIP))
    clf = _model(model_name, weights)
    layer = layers.check_layer(clf, layer_names, option="--layer")
    path, photo = _image(image)
    h, w = photo.shape[:2]
    photo = common.fit(photo, size)
    _check_jitter(jitter, max(photo.shape[:2]))
    if every is None and octaves <= deepdream.max_octaves(photo.shape[:2], octave_scale):
        # More octaves than the photo has room for: dream() says how many it has.
        every = _dream_every(steps, octaves)
    settings = {
        "layer": layer, "octaves": octaves, "octave_scale": octave_scale, "steps": steps,
        "size": size, "lr": lr, "jitter": jitter, "seed": seed,
    }  # fmt: skip

    def work(progress):
        try:
            return deepdream.dream(
                jax.random.key(seed), clf, photo, layer=layer, octaves=octaves,
                octave_scale=octave_scale, steps=steps, lr=lr, jitter=jitter, every=every,
                progress=progress,
            )  # fmt: skip
        except ValueError as err:
            message = one_line(err)
            if max(h, w) > size:
                # The photo was large enough: --size shrank it ("use a larger image" sent
                # the user looking for another photo).
                message = message.replace(
                    "a larger image", f"a larger --size (it shrank the {w}x{h} photo)"
                )
            raise FoolError(message) from None

    result, seconds = _run(octaves * steps, f"dream {path.name}", work)
    out = _out(out_dir, "dream")
    settings["seconds"] = seconds
    report = run.write_dream(out, clf, result, source=path.name, settings=settings)
    click.echo(f"{layer} energy x{report['metrics']['energy gain']:.2f}")
    click.echo(f"open {out / 'index.html'}")


def _split(text: str | None) -> list[str] | None:
    return [t for t in (s.strip() for s in text.split(",")) if t] if text else None


@click.command(name="style", short_help="Paint CONTENT in the style of STYLE (Gatys et al. 2016).")
@click.argument("content", type=IMAGE)
@click.argument("style", type=IMAGE)
@click.option("--content-weight", type=float, default=_STYLE["content"], show_default=True)
@click.option("--style-weight", type=float, default=_STYLE["style"], show_default=True)
@click.option("--tv-weight", type=float, default=_STYLE["tv"], show_default=True)
@click.option(
    "--content-layer",
    multiple=True,
    callback=_one_layer,
    help="[default: second map at stride 16]",
)
@click.option(
    "--style-layers",
    multiple=True,
    callback=_one_layer,
    help="Comma-separated [default: first map of each stride].",
)
@click.option("--steps", type=int, default=_STYLE["steps"], show_default=True)
@click.option(
    "--size",
    type=int,
    default=_STYLE["size"],
    show_default=True,
    help="Longest side of the result (the content photo is shrunk to it).",
)
@click.option("--lr", type=float, default=_STYLE["lr"], show_default=True)
@_every("steps/8")
@_model_options
@_run_options("style", seed=False)
# Not in --help: style starts from the content photo and draws no random numbers. Given,
# it is refused with that reason rather than click's bare "no such option", since every
# other command of this family takes one.
@click.option("--seed", hidden=True)
def style_cmd(
    content: str, style: str, content_weight: float, style_weight: float, tv_weight: float,
    content_layer: str | None, style_layers: str | None, steps: int, size: int, lr: float,
    every: int | None, model_name: str | None, weights: str | None, out_dir: str | None,
    seed: str | None,
) -> None:  # fmt: skip
    """Paint CONTENT in the style of STYLE (Gatys et al. 2016) with the model's features.

    Writes content.png, style.png, result.png, progress.png, report.json and index.html.
    It draws no random numbers (the result starts from CONTENT), so it takes no --seed.
    An --out that already holds a run is refused.
    """
    if seed is not None:
        raise FoolError(
            "fool style takes no --seed: it starts from the content photo and draws no "
            "random numbers, so every seed would give the same image"
        )
    check_positive(
        content_weight=content_weight, style_weight=style_weight, tv_weight=tv_weight, lr=lr
    )
    _check_steps(steps)
    _at_least("--size", size, 16)
    _check_every(every, steps)
    chosen = _split(style_layers)
    if style_layers is not None and not chosen:
        raise FoolError("--style-layers needs at least one layer name")
    import jax

    from fooltools.visualize import layers, run
    from fooltools.visualize import style as style_mod

    outputs = (run.CONTENT, run.STYLE, run.RESULT, run.STRIP)
    _check_out(out_dir, (content, style), lambda name: name in outputs)
    content_path, content_img = _image(content)
    style_path, style_img = _image(style)
    _check_style_side(content_img.shape[:2], size)
    clf = _model(model_name, weights)
    if content_layer is not None:
        layers.check_layer(clf, content_layer, option="--content-layer")
    for name in chosen or ():
        layers.check_layer(clf, name, spatial=True, option="--style-layers")

    def work(progress):
        # stylize takes a key for the common signature only: any key, the same image.
        return style_mod.stylize(
            jax.random.key(0), clf, content_img, style_img, content_layer=content_layer,
            style_layers=chosen, size=size, steps=steps, content_weight=content_weight,
            style_weight=style_weight, tv_weight=tv_weight, lr=lr, every=every,
            progress=progress,
        )  # fmt: skip

    result, seconds = _run(steps, f"style {content_path.name}", work)
    out = _out(out_dir, "style")
    settings = {
        "content_layer": result.content_layer, "style_layers": list(result.style_layers),
        "content_weight": content_weight, "style_weight": style_weight,
        "tv_weight": tv_weight, "steps": steps, "size": size, "lr": lr, "seconds": seconds,
    }  # fmt: skip
    report = run.write_style(
        out, clf, result, content_name=content_path.name, style_name=style_path.name,
        settings=settings,
    )  # fmt: skip
    judged = run.style_verdict(report["style_loss"], report["style_ratio"])
    click.echo(f"{judged}; content loss {report['content_loss']:.3f}")
    click.echo(f"open {out / 'index.html'}")


def _check_style_side(shape: tuple[int, int], size: int) -> None:
    """Refuse a content image whose working image (shrunk to ``size``) is under 16 pixels.

    A 1 x 1 photo was styled into a 1 x 1 result, its feature maps and Gram matrices of
    one position, and reported as a style loss like any other.
    """
    from fooltools.visualize.common import fitted_shape
    from fooltools.visualize.deepdream import MIN_SIDE

    fh, fw = fitted_shape(shape, size)
    if min(fh, fw) >= MIN_SIDE:
        return
    h, w = shape
    why = "use a larger image"
    if (fh, fw) != (h, w):
        why = f"use a larger --size (it shrank the {w}x{h} photo)"
    raise FoolError(
        f"the content image is {fw}x{fh} pixels, too small to style (each side must "
        f"be >= {MIN_SIDE}); {why}"
    )


@click.command(name="layers")
@_model_options
@click.option("--size", type=int, help="Image side to compute shapes at [default: model input].")
def layers_cmd(model_name: str | None, weights: str | None, size: int | None) -> None:
    """List the model's named layers (for --layer) with their feature-map shapes."""
    _check_side(size)
    from fooltools.visualize import layers

    clf = _model(model_name, weights)
    h, w = (size, size) if size else clf.info.input_size
    shapes = layers.layer_shapes(clf, (h, w))
    click.echo(f"{clf.name}: feature maps of a {w}x{h} input (height x width x channels)")
    width = max(len(name) for name in shapes)
    for name, shape in shapes.items():
        click.echo(f"  {name.ljust(width)}  {layers.describe(shape)}")


COMMANDS: tuple[click.Command, ...] = (invert_cmd, visualize_cmd, dream_cmd, style_cmd, layers_cmd)
