"""Results of the data-parallel code paths, printed as JSON (run by test_sharding.py).

Run as a script under ``XLA_FLAGS=--xla_force_host_platform_device_count=2`` it computes the
same things with the batch split over two CPU devices; imported, on one device.
"""

import json
import sys
import tempfile
from pathlib import Path

import jax

from fooltools import rng, sharding
from fooltools.detection import evaluate, synthetic
from fooltools.detection.detectors import load_detector
from fooltools.evolve.direct import direct
from fooltools.evolve.run import evolve_single
from fooltools.evolve.search import SearchConfig
from fooltools.labels import imagenet
from fooltools.models.base import Classifier, ModelInfo

S = 12  # tiny input size


def tiny() -> Classifier:
    """A linear 'ImageNet' classifier on 12x12 images (also test_evolve.py's)."""
    w = jax.jit(rng.normal, static_argnums=1)(jax.random.key(0), (S * S * 3, 1000)) * 0.05
    info = ModelInfo("tiny", (S, S), S, (0.5,) * 3, (0.5,) * 3, (0.0, 1.0), 0.0, "test", "-", "-")
    return Classifier(
        info=info,
        apply=lambda p, x: x.reshape(x.shape[0], -1) @ p["w"],
        params={"w": w},
        labels=imagenet(),
        features=lambda p, x: {},
    )


def probe() -> dict:
    """Evolution (an odd offspring count, so padding is exercised) and a detector attack.

    The CPPN encoding and MAP-Elites go through the same evaluator (search.make_evaluator).
    """
    clf, out = tiny(), {"devices": sharding.device_count()}
    # 15 individuals - 2 elites = 13 offspring per generation: not a multiple of 2 devices.
    cfg = SearchConfig(population=15, generations=3, elites=2, stop_at=None)
    with tempfile.TemporaryDirectory() as tmp:
        enc = direct(height=S, width=S)
        run = evolve_single(clf, enc, "direct", 15, cfg, seed=0, out=Path(tmp) / "plain")
        out["direct"] = [h["best"] for h in run["history"]]
        # Parents picked on the device, each generation queued before the last is
        # collected (as on GPUs): on several devices, as the generation's jitted parts.
        kw = {"seed": 0, "out": Path(tmp) / "ahead", "lookahead": True}
        run = evolve_single(clf, enc, "direct", 15, cfg, **kw)
        out["direct-lookahead"] = [h["best"] for h in run["history"]]
    det = load_detector("yolo")
    # 8 images: on one device, the batch of 8 that test_detection_eval.py's attack takes.
    data = synthetic.make_dataset(synthetic.TEST_SEED, 8)
    found = evaluate.detect_all(det, data.images, batch=3)  # 3 rows: padded to 4
    out["detect_scores"] = found.scores.tolist()
    ev = evaluate.evaluate(det, data, attack="vanish", steps=1, batch=8)
    out["vanish"] = [ev.clean_map50, ev.attacked_map50, ev.clean_objects, ev.attacked_objects]
    return out


if __name__ == "__main__":
    json.dump(probe(), sys.stdout)
