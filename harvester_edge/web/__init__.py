"""The web monitor of the central service: `app.include_router(web.router.monitor_router(app))` adds /monitor
and /metrics (harvester_edge.server mounts it beside the central app). The page data and rendering modules import
no web framework: the CLI and `report` use them too."""
