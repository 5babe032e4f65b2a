"""Prometheus metrics: state counts read from the central and harvester DBs at scrape time, plus in-process
timings (agent cycles, batch commands, HTTP requests) that the daemon records through the observe_* functions.

Counts come from the databases (not counters kept in memory) so a restart loses nothing and the numbers agree
with the monitor pages and `harvester-edge status`. Metric names start with `harvester_edge_`.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import jwt
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from harvester_edge.central.store import database, monitor, pg
from harvester_edge.central.store.conn import Conn
from harvester_edge.store import alerts, jobs, outbox, ranges, workers
from harvester_edge.store.readonly import open_readonly

log = logging.getLogger(__name__)

RANGE_NAMES = {
    0: "ready",
    1: "sent",
    2: "running",
    3: "finished",
    4: "cancelled",
    5: "discarded",
    6: "done",
    7: "failed",
    8: "fatal",
    9: "merged",
    10: "corrupted",
}

# In-process timings; the registry is the module's own so tests and several apps in one process do not clash.
REGISTRY = CollectorRegistry(auto_describe=True)
AGENT_CYCLE = Histogram(
    "harvester_edge_agent_cycle_seconds",
    "Duration of one agent cycle",
    ["agent"],
    registry=REGISTRY,
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BATCH_COMMAND = Histogram(
    "harvester_edge_batch_command_seconds",
    "Latency of batch system commands",
    ["command"],
    registry=REGISTRY,
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
BATCH_ERRORS = Counter(
    "harvester_edge_batch_command_errors",
    "Batch commands that failed (exit != 0 or timeout)",
    ["command"],
    registry=REGISTRY,
)
HTTP_REQUEST = Histogram(
    "harvester_edge_http_request_seconds",
    "Central service HTTP request latency",
    ["method", "route", "code"],
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


def observe_cycle(agent: str, seconds: float) -> None:
    """Record one agent cycle (call from the agent loop)."""
    AGENT_CYCLE.labels(agent).observe(seconds)


def observe_batch_command(command: str, seconds: float, ok: bool) -> None:
    """Record one batch command (sbatch, squeue, ...): its latency and whether it failed."""
    BATCH_COMMAND.labels(command).observe(seconds)
    if not ok:
        BATCH_ERRORS.labels(command).inc()


UNMATCHED = "<unmatched>"  # the one route label of every path no route answers
UNKNOWN = "<unknown>"  # a free-text path parameter whose value is not in the route's closed set
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
TIMED = "harvester_edge.timed"  # scope key: an outer HttpTiming measures this request, inner ones pass it on


def _legacy_methods() -> frozenset[str]:
    # heavy (FastAPI): the legacy dialect loads only where HTTP is timed; agents and the CLI use the counters above
    from harvester_edge.central.legacy import METHODS

    return frozenset(METHODS) | {"isAlive"}


# Templates whose path parameter is free text that names an operation: the label keeps the value only when it is
# one of the known names (a closed set), else UNKNOWN. Other parameters (ids) stay as their {name} in the template.
CLOSED_PARAMETERS: dict[str, tuple[str, Callable[[], frozenset[str]]]] = {
    "/server/panda/{method}": ("method", _legacy_methods),
}


def route_templates(app: Any) -> list[str]:
    """The path templates an app answers, in its routing order: its own routes (/docs, /openapi.json, ...) and
    every path of its OpenAPI document (included routers with their prefixes: FastAPI's public view of them)."""
    templates = [
        path
        for path in (getattr(r, "path", None) for r in getattr(app, "routes", []))
        if isinstance(path, str) and path
    ]
    openapi = getattr(app, "openapi", None)
    if callable(openapi):
        try:
            paths = openapi().get("paths", {})
        except Exception:
            log.exception(
                "metrics: the OpenAPI document cannot be built; HTTP requests to the routers' paths are labelled %s",
                UNMATCHED,
            )
            paths = {}
        templates += [path for path in paths if path not in templates]
    # a closed-parameter route may be documented per value (central/apidoc.py splits /server/panda/{method}):
    # its template still labels the values it does not list
    templates += [path for path in CLOSED_PARAMETERS if path not in templates]
    return templates


class RouteLabels:
    """Request path -> the label of its route: the matched template, a closed parameter's value or UNKNOWN,
    and UNMATCHED for every path no template matches. The number of labels is bounded by the number of routes."""

    def __init__(self, templates: Sequence[str]) -> None:
        self.routes = [(template, compile_path(template)[0]) for template in templates]

    def __call__(self, path: str) -> str:
        for template, regex in self.routes:
            match = regex.match(path)
            if match:
                closed = CLOSED_PARAMETERS.get(template)
                if closed is None:
                    return template
                name, known = closed
                value = match.group(name)
                return template.replace("{" + name + "}", value if value in known() else UNKNOWN)
        return UNMATCHED


def _app_with_routes(app: Any) -> Any:
    """The first app down the `.app` chain that has an OpenAPI document (FastPath -> FastAPI)."""
    for _ in range(32):
        if app is None or callable(getattr(app, "openapi", None)):
            return app
        app = getattr(app, "app", None)
    return None


class HttpTiming:
    """ASGI middleware: the latency of every HTTP request, labelled (method, route template, status code).

    Wrap the whole stack (server.py does, so the hot path is measured too); an inner HttpTiming, such as the one
    monitor_router adds to the FastAPI app, then passes requests through instead of counting them twice.
    source: the app whose routes name the labels (default: the first FastAPI app down the `.app` chain).
    Labels are computed once per path in a bounded cache: a flood of random paths costs no memory."""

    def __init__(self, app: ASGIApp, source: Any = None) -> None:
        self.app = app
        self.source = source
        self._labels: RouteLabels | None = None
        self._label = lru_cache(maxsize=4096)(self._compute_label)

    def route_labels(self) -> RouteLabels:
        """Built at the first call from the app's OpenAPI document (~0.3 s of CPU): a server calls it before it
        serves, else the first request of each service process pays it (central serve --workers)."""
        if self._labels is None:
            self._labels = RouteLabels(route_templates(self.source or _app_with_routes(self.app)))
        return self._labels

    def _compute_label(self, path: str) -> str:
        return self.route_labels()(path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get(TIMED):
            await self.app(scope, receive, send)
            return
        scope[TIMED] = True
        start, code = time.perf_counter(), [500]

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                code[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            method = scope.get("method", "")
            HTTP_REQUEST.labels(
                method if method in HTTP_METHODS else "OTHER", self._label(scope.get("path", "")), str(code[0])
            ).observe(time.perf_counter() - start)


def _gauge(name: str, doc: str, labels: list[str], rows: Iterable[Sequence[Any]]) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=labels)
    for *values, n in rows:
        g.add_metric([str(v) for v in values], float(n or 0))
    return g


def central_families(conn: Conn, now: float) -> list:
    """Families from the central DB: tasks/jobs/ranges by state, events finished, token key expiry, task times."""
    fams: list[Metric] = [
        _gauge(
            "harvester_edge_central_tasks",
            "Tasks by state",
            ["state"],
            monitor.tasks_by_status(conn),
        ),
        _gauge(
            "harvester_edge_central_jobs",
            "Jumbo jobs by state (central service)",
            ["state"],
            monitor.jobs_by_status(conn),
        ),
        _gauge(
            "harvester_edge_central_event_ranges",
            "Event ranges by state (central service)",
            ["state"],
            [(RANGE_NAMES.get(s, str(s)), n) for s, n in monitor.ranges_by_status(conn)],
        ),
    ]
    done = CounterMetricFamily("harvester_edge_events_finished", "Events in finished ranges", labels=["task"])
    for task_id, n in monitor.events_finished_by_task(conn):
        done.add_metric([str(task_id)], float(n))
    fams.append(done)
    expiry = GaugeMetricFamily(
        "harvester_edge_token_key_expiry_seconds",
        "Seconds until the newest unrevoked token key of each client expires",
        labels=["client"],
    )
    for client, expires in monitor.key_expiry_by_client(conn):
        expiry.add_metric([client], float(expires - now))
    fams.append(expiry)
    # The seeds' system metric: how long tasks are active (created -> last change when done, -> now otherwise).
    active = monitor.task_active_time(conn, now)
    fams.append(
        _gauge(
            "harvester_edge_task_active_seconds_avg",
            "Average task active time (created -> done/now)",
            [],
            [(active[0] or 0,)],
        )
    )
    return fams


def harvester_families(conn: sqlite3.Connection) -> list:
    """Families from the harvester DB: jobs, workers, ranges by state, outbox depth, average queue time, alerts."""
    fams: list[Metric] = [
        _gauge(
            "harvester_edge_jobs",
            "Jobs held by the harvester, by state",
            ["state"],
            jobs.count_by_state(conn),
        ),
        _gauge(
            "harvester_edge_workers",
            "Workers by queue and state",
            ["queue", "state"],
            workers.count_by_queue_state(conn),
        ),
        _gauge(
            "harvester_edge_event_ranges",
            "Event ranges held by the harvester, by state",
            ["state"],
            ranges.count_by_state(conn),
        ),
        _gauge(
            "harvester_edge_outbox_depth",
            "Outbox messages by state (pending = not yet accepted centrally)",
            ["state"],
            outbox.count_by_state(conn),
        ),
    ]
    # The seeds' system metric: average queue time, batch submit -> running, per queue.
    fams.append(
        _gauge(
            "harvester_edge_queue_time_seconds_avg",
            "Average worker queue time (submit -> running)",
            ["queue"],
            workers.queue_time_avg(conn),
        )
    )
    fams += alert_families(conn)
    return fams


ALERT_RULES = (  # every rule of harvester_edge.alerts.rules: each has its firing gauge, 0 when nothing fires
    "central_unreachable",
    "outbox_rejected",
    "queue_paused",
    "credential_expiring",
    "agent_stalled",
    "task_failed",
    "worker_failures",
)


def alert_families(conn: sqlite3.Connection) -> list[Metric]:
    """The alert rules' conditions as the daemon's alerts agent last evaluated them (the alerts table), so
    Alertmanager can alert on the same things: firing alerts per rule, and every observed value and threshold."""
    if not alerts.has_table(conn):
        return []  # a DB the daemon of this version has not migrated yet
    rows = alerts.all_alerts(conn)
    counts = alerts.firing_by_rule(conn)
    firing_count = GaugeMetricFamily(
        "harvester_edge_alert_firing", "Alerts firing now, per rule (harvester-edge alerts)", labels=["rule"]
    )
    for rule in sorted(set(ALERT_RULES) | set(counts)):
        firing_count.add_metric([rule], float(counts.get(rule, 0)))
    firing = GaugeMetricFamily(
        "harvester_edge_alert_active", "1 while the alert (rule, key) fires, else 0", labels=["rule", "key"]
    )
    value = GaugeMetricFamily(
        "harvester_edge_alert_value", "The value the alert rule last observed", labels=["rule", "key"]
    )
    threshold = GaugeMetricFamily(
        "harvester_edge_alert_threshold", "The alert rule's threshold", labels=["rule", "key"]
    )
    for row in rows:
        labels = [row["rule"], row["key"]]
        firing.add_metric(labels, 1.0 if row["state"] == alerts.FIRING else 0.0)
        if row["value"] is not None:
            value.add_metric(labels, float(row["value"]))
        if row["threshold"] is not None:
            threshold.add_metric(labels, float(row["threshold"]))
    evaluated = GaugeMetricFamily(
        "harvester_edge_alerts_evaluated_timestamp_seconds",
        "When the daemon's alerts agent last evaluated the rules (a stale value: the daemon is not running)",
    )
    last = alerts.last_evaluated(conn)
    if last is not None:
        evaluated.add_metric([], float(last))
    return [firing_count, firing, value, threshold, evaluated]


class DatabaseCollector:
    """A prometheus_client collector over the two DB files; a DB that cannot be read is skipped with a warning.
    central_url: the central service's PostgreSQL database (central.db: postgresql://...) read instead of a file."""

    def __init__(
        self, central_db: Path | None, harvester_db: Path | None, clock=time.time, central_url: str | None = None
    ) -> None:
        self.central_db, self.harvester_db, self.clock = central_db, harvester_db, clock
        self.central_url = central_url

    def _central_on_postgresql(self, url: str) -> list:
        with database.reading(url) as reader:
            return central_families(reader, self.clock())

    def collect(self):
        if self.central_url is not None:
            try:
                yield from self._central_on_postgresql(self.central_url)
            except (pg.psycopg.Error, pg.StoreError) as exc:
                log.warning(
                    "metrics: cannot read %s (%s); its metrics are left out of this scrape",
                    pg.redact(self.central_url),
                    exc,
                )
        for path, build in (
            (None if self.central_url else self.central_db, lambda c: central_families(c, self.clock())),
            (self.harvester_db, harvester_families),
        ):
            if path is None or not Path(path).exists():
                continue
            try:
                conn = open_readonly(path)
                try:
                    families = build(conn)
                finally:
                    conn.close()
            except sqlite3.Error as exc:
                log.warning("metrics: cannot read %s (%s); its metrics are left out of this scrape", path, exc)
                continue
            yield from families


def token_file_expiry(token_file: Path) -> float:
    """The `exp` claim of the bearer token in a file (not verified: the file is the harvester's own, and only its
    expiry is read). Raises OSError, KeyError, TypeError, ValueError or jwt.PyJWTError when there is none."""
    claims = jwt.decode(Path(token_file).read_text().strip(), options={"verify_signature": False})
    return float(claims["exp"])


class TokenFileCollector:
    """Seconds until the bearer token in the harvester's token file expires (token_file_expiry)."""

    def __init__(self, token_file: Path | None, clock=time.time) -> None:
        self.token_file, self.clock = token_file, clock

    def collect(self):
        if self.token_file is None or not Path(self.token_file).is_file():
            return

        try:
            exp = token_file_expiry(Path(self.token_file))
        except (OSError, KeyError, TypeError, ValueError, jwt.PyJWTError) as exc:
            log.warning(
                "metrics: token file %s has no readable exp claim (%s); token expiry left out", self.token_file, exc
            )
            return
        g = GaugeMetricFamily(
            "harvester_edge_token_expiry_seconds", "Seconds until the harvester's token expires", labels=["file"]
        )
        g.add_metric([str(self.token_file)], exp - self.clock())
        yield g


def exposition(service: Any, harvester_db: Path | None, token_file: Path | None = None) -> tuple[bytes, str]:
    """The text exposition for /metrics: the DB-derived families, the token file, and the in-process timings."""
    central_db = Path(service.db.path) if service is not None else None
    central_url = service.db.url if service is not None and isinstance(service.db, pg.PgDatabase) else None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(central_db, harvester_db, central_url=central_url))
    registry.register(TokenFileCollector(token_file))
    return generate_latest(registry) + generate_latest(REGISTRY), CONTENT_TYPE_LATEST
