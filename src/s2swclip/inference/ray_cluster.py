"""The Ray session of ``predict --engine ray``: joining or starting Ray, its Data settings, the
resources a run needs, and the user error behind a failed task (driver side)."""

from __future__ import annotations

import contextlib
import logging
import socket
from typing import Any

from ..errors import S2SWError, first_line

__all__ = ["check_reachable", "check_resources", "data_context", "ray_session", "worker_error"]

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT_S = 5.0


def _parse_address(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a cluster address (None for ``auto``); S2SWError when malformed."""
    if address == "auto":
        return None
    hostport = address.split("://", 1)[1] if address.startswith("ray://") else address
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise S2SWError(f"ray_address {address!r} is not HOST:PORT, ray://HOST:PORT or auto; use the "
                        f"address 'ray start --head' prints, e.g. 10.0.0.5:6379", fields=["ray_address"])
    return host.strip("[]"), int(port)


def check_reachable(address: str) -> None:
    """Fail fast (seconds, not Ray's minutes of retries) when nothing listens at the address."""
    target = _parse_address(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=_CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise S2SWError(f"cannot reach a Ray cluster at ray_address {address}, {first_line(exc)}; "
                        f"start one with 'ray start --head' and pass the address it prints, or leave "
                        f"ray_address out to run on this machine", fields=["ray_address"]) from None


@contextlib.contextmanager
def ray_session(address: str | None, local_cpus: int | None):
    """Ray, connected: reuses a Ray already initialised by the calling program (and leaves it
    running), else connects to ``address`` or starts a local instance, and shuts it down after.
    Yields ``(ray, owned_local)``."""
    try:
        import ray
    except ImportError:
        raise S2SWError("the Ray engine needs Ray: pip install 's2swclip[ray]'") from None
    if ray.is_initialized():
        if address is not None:
            log.info("using the Ray this program already initialised, not ray_address %s", address)
        yield ray, False
        return
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address is None:
        kwargs.update(include_dashboard=False, num_cpus=local_cpus)
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at ray_address {address}" if address else "a local Ray instance"
        raise S2SWError(f"cannot start or join {where}: {first_line(exc)}",
                        fields=["ray_address"] if address else []) from None
    try:
        yield ray, address is None
    finally:
        ray.shutdown()


@contextlib.contextmanager
def data_context():
    """Ray Data settings for this run (restored after): no Ray progress bars or execution
    banners (we report progress), the original exception of a failing task."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    wanted = {"enable_progress_bars": False, "print_on_execution_start": False,
              "raise_original_map_exception": True, "enable_auto_log_stats": False}
    saved = {k: getattr(ctx, k) for k in wanted}
    data_log = logging.getLogger("ray.data")
    saved_level = data_log.level
    for k, v in wanted.items():
        setattr(ctx, k, v)
    data_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(ctx, k, v)
        data_log.setLevel(saved_level)


def check_resources(ray, owned_local: bool, workers: int, cpus: float, gpus: float) -> None:
    """Refuse (on a local instance) or warn (on a cluster, which may scale up) when the actor
    pool plus one decoding task cannot be scheduled: Ray would wait for ever."""
    total = ray.cluster_resources()
    need_cpu, need_gpu = workers * cpus + 1, workers * gpus
    have_cpu, have_gpu = total.get("CPU", 0.0), total.get("GPU", 0.0)
    if need_cpu <= have_cpu + 1e-9 and need_gpu <= have_gpu + 1e-9:
        return
    msg = (f"{workers} worker(s) x {cpus:g} CPU and {gpus:g} GPU, plus 1 CPU for decoding, need "
           f"{need_cpu:g} CPUs and {need_gpu:g} GPUs; the cluster has {have_cpu:g} CPUs and {have_gpu:g} GPUs")
    if owned_local:
        raise S2SWError(f"{msg}: use fewer workers; a smaller cpus_per_worker, e.g. 0.5; a smaller "
                        f"gpus_per_worker; or a cluster, ray_address",
                        fields=["workers", "cpus_per_worker", "gpus_per_worker", "ray_address"])
    log.warning("%s; waiting for the cluster to provide them", msg)


def worker_error(exc: BaseException) -> S2SWError | None:
    """The user error behind a failed Ray task, if there is one (one line)."""
    seen: set[int] = set()
    c: BaseException | None = exc
    while c is not None and id(c) not in seen:
        seen.add(id(c))
        if isinstance(c, S2SWError):
            # Ray's RayTaskError(S2SWError) reads as Ray's traceback: the message is its first argument
            message = S2SWError(*c.args[:1]) if c.args else c
            return S2SWError(f"scoring worker: {first_line(message, limit=1000)}", fields=getattr(c, "fields", ()))
        c = getattr(c, "cause", None) or c.__cause__ or c.__context__
    return None
