"""Suite-wide settings: one torch thread per test process (the CI machine has 2 cores), offline
Hugging Face, loopback-only Ray."""

import os

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
