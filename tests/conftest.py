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


_session: pytest.Session | None = None


def pytest_sessionstart(session: pytest.Session) -> None:
    global _session
    _session = session


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the test process here, with pytest's own exit status, before the interpreter's
    teardown. This one process starts and stops a Ray session per module (about twenty);
    ``ray.shutdown()`` leaves Ray's native threads behind (gcs_client_io, worker.io, gRPC's
    event engine and timer threads, still there at this point), and a run whose 378 tests had
    all passed died in that teardown with SIGSEGV (CI, stop 12), the summary already printed.
    Restarting Ray in one process is a known hazard (ray-project/ray#31145); the product's
    processes start Ray once. Nothing of the suite's is left to run here: results, caches
    and reports were written at session finish."""
    if _session is None or os.environ.get("RVOS_TEST_INTERPRETER_TEARDOWN") == "1":
        return
    status = int(_session.exitstatus)
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except (AttributeError, ValueError, OSError):
            pass
    os._exit(status)
