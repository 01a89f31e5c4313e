"""Suite-wide settings: one torch thread per test process (the CI machine has 2 cores), offline
Hugging Face, loopback-only Ray."""

import os
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Ray reads RAY_AUTH_MODE once, when it is first imported, and passes it on to the GCS it starts.
# Test modules are imported (collected) before any test runs, in one process: one suite-wide
# mode set here, before any of them imports Ray, keeps driver and GCS agreeing (a module that
# set it after another had imported Ray left the driver unable to reach its own GCS).
os.environ.setdefault("RAY_AUTH_MODE", "token")

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the scorer's tests run without torch
    pass


@pytest.fixture(autouse=True, scope="module")
def _no_ray_left_connected(request):
    """A module that leaves this process connected to Ray fails here, and the connection is
    closed, so the next module's own ``ray.init`` is not refused as a second init."""
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
        pytest.fail(f"{request.module.__name__} left this process connected to Ray (a ray.init "
                    f"without its ray.shutdown)")
