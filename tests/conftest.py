import os

import pytest

# Keep the suite's converted-params and XLA caches out of the user's home, but share
# them across the session so each model converts once.
_CACHE = os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "fooltools-cache")
os.environ.setdefault("FOOLTOOLS_CACHE_DIR", os.path.abspath(_CACHE))


@pytest.fixture(scope="session")
def lite0():
    from fooltools.models import load_model

    return load_model("efficientnet_lite0.in1k")


# `make test` runs the suite on two xdist workers (`-n 2 --dist loadfile`): each module
# runs on one worker, so its module-scoped fixtures (compiled attacks, loaded detectors)
# are built once. A worker takes the next module when it is nearly done with the last,
# so modules start longest first (each with its seconds in one clean-clone run) and
# the two workers finish at about the same time, the short ones filling in at the end.
# `--no-loadscope-reorder` keeps this order: by default xdist starts the modules with
# the most tests first, which ran test_perturb_minimal last, alone (worker spans 769 and
# 725 s in a clean-clone run; this order, replayed on that run's times: 743 and 748 s).
_LONGEST_FIRST = (
    "test_detection_eval",  # 187
    "test_experiments",  # 149
    "test_perturb_minimal",  # 137
    "test_evolve",  # 135
    "test_cppn",  # 104
    "test_detection_attacks",  # 79
    "test_perturb",  # 78
    "test_attacks",  # 74
    "test_cli_visualize",  # 71
    "test_models",  # 70
    "test_rcnn_synth",  # 63
    "test_yolo_synth",  # 61
    "test_visualize",  # 60
    "test_notebooks",  # 54
    "test_faster_rcnn",  # 47
    "test_faster_rcnn_mobilenet",  # 37
    "test_sharding",  # 36
    "test_yolo",  # 27
    "test_cli",  # 19
    "test_rng",  # 17
    "test_boxes",  # 15
)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.module.__name__
        return _LONGEST_FIRST.index(name) if name in _LONGEST_FIRST else len(_LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a module is kept


def pytest_configure(config):
    # JAX's persistent compilation cache, as `fool` itself uses it (in the cache dir
    # above, which starts empty in a clean clone): the same computation compiled by
    # several tests, on either worker or in a `fool` subprocess, compiles once. A
    # clean-clone suite took 742 s without it and 597 s with it.
    from fooltools.cache import enable_compilation_cache

    enable_compilation_cache()
