"""Connecting to Ray: the one place that calls ``ray.init``.

The jobs call :func:`connect` before they build a Ray Data pipeline or a trainer. It joins the cluster that
``RAY_ADDRESS`` names (``ray job submit`` sets it), or starts a local Ray instance in this process, and does nothing
when this process is already connected. One of the three Ray adapters, with ``extract/ray.py`` and ``train/ray.py``.
"""

from __future__ import annotations

import ray


def is_connected() -> bool:
    """Whether this process is already connected to Ray."""
    return ray.is_initialized()


def connect(dashboard: bool = False) -> str | None:
    """Connect to Ray unless connected; returns the dashboard URL when this call started a local one, else None.

    Args:
        dashboard: start the dashboard (on 127.0.0.1 only) when a local instance is started.
    """
    if ray.is_initialized():
        return None
    if not dashboard:
        ray.init()
        return None
    return ray.init(include_dashboard=True, dashboard_host="127.0.0.1").dashboard_url or None
