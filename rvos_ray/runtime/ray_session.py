"""Starting or joining Ray: one helper for every command (run, demo, sweep, ablate, training, jobs).

Two rules, whichever way the program was started:

- **Only an explicit address joins a cluster** (``--address``, the config's ``ray.address`` or
  ``RAY_ADDRESS``, which ``ray job submit`` sets for its driver). Otherwise a *new* local Ray
  starts (``address="local"``), never a head some earlier ``ray start`` left listed in Ray's
  temp folder, dead or alive.
- **A local Ray listens on 127.0.0.1 only, with token authentication.** Ray reads both settings
  (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: node address and every port on loopback;
  ``RAY_AUTH_MODE=token``) once, when it is imported, so :func:`prepare` sets them before that
  import, and :func:`connect` refuses to start a Ray that was imported without them. A cluster
  that is joined keeps its own settings (its nodes were started with theirs).

This module imports Ray only inside :func:`connect` / :func:`disconnect`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

log = logging.getLogger(__name__)

#: environment of a process that starts a local Ray (setdefault: the user's own values win)
LOCAL_ENV = {
    # Linux reads 0 as "no multi-host cluster": the node registers as 127.0.0.1 and binds there.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # any user of this machine could otherwise connect to the loopback ports and run code as you;
    # the token is ~/.ray/auth_token, read by `ray job submit` and the dashboard too
    "RAY_AUTH_MODE": "token",
    # a busy machine can take longer than Ray's defaults to start the node's agents
    "RAY_agent_register_timeout_ms": "120000",
    "RAY_raylet_start_wait_time_s": "120",
}

#: local starts tried (a node that missed its start window on a loaded machine); argument
#: errors (ValueError, TypeError) are never retried
START_ATTEMPTS = 2


class RaySessionError(RuntimeError):
    """Ray cannot be started or joined as asked (the message says why and what to do)."""


def target_address(address: str | None = None, configured: str | None = "") -> str:
    """The cluster to join: ``address`` (a command-line flag), else the config's, else
    ``RAY_ADDRESS``; ``""`` means: start a local Ray."""
    return str(address or configured or os.environ.get("RAY_ADDRESS", "") or "")


def prepare(address: str) -> None:
    """Set what Ray must read at import for this session; call before anything imports Ray.

    Joining (``address`` non-empty) changes nothing. Starting locally sets :data:`LOCAL_ENV`."""
    if address:
        return
    for k, v in LOCAL_ENV.items():
        os.environ.setdefault(k, v)


def _loopback_ready() -> bool:
    """Whether the imported Ray will keep a local node on 127.0.0.1."""
    from ray._private import ray_constants  # the constant Ray computed from the env at import

    return not bool(getattr(ray_constants, "ENABLE_RAY_CLUSTER", True))


def connect(address: str = "", *, num_cpus: int | None = None, resources: Mapping[str, float] | None = None,
            dashboard: bool = False, dashboard_host: str = "127.0.0.1", log_to_driver: bool = True) -> bool:
    """Join ``address`` or start a new local Ray on 127.0.0.1. Returns True when this call
    connected (the caller then calls :func:`disconnect`); False when this process already was
    connected (tests, notebooks): that session is used as it is and left alone."""
    prepare(address)
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=log_to_driver)
        return True
    if not _loopback_ready():
        raise RaySessionError(
            "Ray was imported before rvos-ray could keep it on 127.0.0.1 (a local Ray would listen "
            "on every interface). Set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (and RAY_AUTH_MODE=token) "
            "before importing Ray, or join a cluster with an address.")
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            ray.init(
                address="local",  # always a new Ray: never join a head left in Ray's temp folder
                num_cpus=None if num_cpus is None else int(num_cpus),
                resources={str(k): float(v) for k, v in (resources or {}).items()} or None,
                include_dashboard=bool(dashboard),
                dashboard_host=str(dashboard_host),
                _node_ip_address="127.0.0.1",
                log_to_driver=log_to_driver,
            )
            return True
        except (ValueError, TypeError):
            ray.shutdown()
            raise
        except Exception as e:  # noqa: BLE001 - a node start failing half-way raises a bare Exception
            # a start that failed half-way leaves this process marked as connected: undo it
            ray.shutdown()
            if attempt == START_ATTEMPTS:
                raise
            log.warning("local Ray did not start (%s); retrying once", str(e).splitlines()[0] if str(e) else e)
    raise AssertionError("unreachable")


def disconnect(started: bool) -> None:
    """Shut down the Ray this process connected to, if :func:`connect` said it did."""
    if started and "ray" in sys.modules:
        import ray

        ray.shutdown()


@contextmanager
def session(address: str = "", **kwargs) -> Iterator[bool]:
    """``with session(addr, num_cpus=...) as started:`` :func:`connect`, then :func:`disconnect`."""
    started = connect(address, **kwargs)
    try:
        yield started
    finally:
        disconnect(started)
