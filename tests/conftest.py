import contextlib
import os
import threading
import types

import pytest

# Keep the suite's converted-params and XLA caches out of the user's home, but share
# them across the session so each model converts once.
_CACHE = os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "fooltools-cache")
os.environ.setdefault("FOOLTOOLS_CACHE_DIR", os.path.abspath(_CACHE))


@pytest.fixture(scope="session")
def lite0():
    from fooltools.models import load_model

    return load_model("efficientnet_lite0.in1k")


@pytest.fixture
def huge_npz(tmp_path):
    """Write an ``.npz`` whose one member declares 16 TiB of float32 (and holds 16 bytes).

    numpy allocates a member's declared shape before reading it: a loader must refuse
    such a file rather than raise MemoryError. Call it with the member's name.
    """
    import io
    import zipfile

    from numpy.lib import format as npformat

    def make(member: str):
        header = io.BytesIO()
        npformat.write_array_header_1_0(
            header, {"descr": "<f4", "fortran_order": False, "shape": (2**42,)}
        )
        path = tmp_path / "huge.npz"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr(f"{member}.npy", header.getvalue() + bytes(16))
        return path

    return make


@pytest.fixture
def fifo(tmp_path):
    """A named pipe, and an event set if a reader's ``open`` blocked on it.

    After 2 s a helper thread starts letting each blocked ``open`` return (at EOF), so a
    test of code that wrongly opens it to read fails (the event is set) instead of hanging.
    """
    path = tmp_path / "fifo"
    os.mkfifo(path)
    done, blocked = threading.Event(), threading.Event()

    def unblock():
        if done.wait(2):
            return
        while not done.wait(0.05):
            with contextlib.suppress(OSError):  # succeeds only while a reader waits
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
                blocked.set()

    thread = threading.Thread(target=unblock, daemon=True)
    thread.start()
    yield types.SimpleNamespace(path=path, blocked=blocked)
    done.set()
    thread.join()


# `make test` runs the suite on two xdist workers (`-n 2 --dist loadfile`): each module
# runs on one worker, so its module-scoped fixtures (compiled attacks, loaded detectors)
# are built once. xdist would start the modules with the most tests first. Forcing the
# longest modules first instead balanced the two workers (831 and 832 s) but ran slower:
# 845 s twice against 787 s, with 988 s of compilation against 874 (the heavy modules,
# started together, compiled more of the same programs twice). So the order below is
# xdist's, with one exception, and `make test` passes `--no-loadscope-reorder` to keep it.
#
# The two modules with few tests and a long run came last: test_sharding.py (~110 s, a
# subprocess on two forced devices) and test_perturb_minimal.py (~130 s, compiling three
# attacks on Lite0), each running alone at the end while the other worker had finished.
EARLY = {"tests/test_sharding.py": 2, "tests/test_perturb_minimal.py": 3}  # module -> place


def pytest_collection_modifyitems(items):
    counts: dict[str, int] = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        counts[module] = counts.get(module, 0) + 1
    order = sorted(counts, key=lambda m: -counts[m])  # stable: xdist's order
    for module, place in EARLY.items():
        if module in order:
            order.remove(module)
            order.insert(place, module)
    rank = {m: i for i, m in enumerate(order)}
    items.sort(key=lambda item: rank[item.nodeid.split("::")[0]])


def pytest_configure(config):
    # JAX's persistent compilation cache, as `fool` itself uses it (in the cache dir
    # above, which starts empty in a clean clone): the same computation compiled by
    # several tests, on either worker or in a `fool` subprocess, compiles once. A
    # clean-clone suite took 742 s without it and 597 s with it.
    from fooltools.cache import enable_compilation_cache

    enable_compilation_cache()
