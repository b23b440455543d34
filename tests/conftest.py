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
# are built once. Modules start longest first, so that the two workers finish at about
# the same time.
_LONGEST_FIRST = (
    "test_perturb_minimal",
    "test_perturb",
    "test_experiments",
    "test_detection_eval",
    "test_notebooks",
    "test_visualize",
    "test_sharding",
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
