"""The web monitor of the central service: `app.include_router(monitor_router(app))` adds /monitor and /metrics
(harvester_edge.server mounts it beside the central app)."""

from .router import monitor_router

__all__ = ["monitor_router"]
