"""Test setup: the Triton interpreter on CPU (set before anything imports triton), outputs
poisoned with NaN before kernels write them, an empty tuning cache, a fixed seed per test, and the
`gpu` marker."""
import os
import tempfile
import zlib

os.environ.setdefault("TRITON_INTERPRET", "1")
# a tuning cache of the tests' own (none): entries a user tuned on this machine must not change results
os.environ["COSMOS_KERNELS_TUNE_CACHE"] = os.path.join(tempfile.mkdtemp(prefix="cosmos-tests-"), "tuning.json")
os.environ["COSMOS_KERNELS_POISON"] = "1"
os.environ.pop("COSMOS_KERNELS_BACKEND", None)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed(request):
    # a fresh but reproducible random stream per test (derived from the test's name)
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    yield
