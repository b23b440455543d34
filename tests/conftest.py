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
