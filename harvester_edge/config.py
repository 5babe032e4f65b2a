"""The site config: one YAML file per edge node, validated strictly at load.

Every error names the file, the line, the key path and what was expected, e.g.
    site.yaml:12: queues[0].walltime_max: expected a duration such as 90, "90s", ... got '2 hourz'
Unknown keys are errors (with a "did you mean"), so a typo never silently falls back to a default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator

from harvester_edge.batch import ENTRY_POINT_GROUP, known_plugins
from harvester_edge.central.settings import CentralSettings
from harvester_edge.durations import Duration, IntDuration
from harvester_edge.errors import ConfigError
from harvester_edge.yaml_errors import describe_validation_error, load_yaml_mapping

WORK_DIR_ENV = "HARVESTER_EDGE_WORK_DIR"  # overrides paths.work_dir (tests, the demo, CI)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PersistentConfig(Strict):
    """Semi-persistent pilots (README "Persistent pilots"): a pilot out of ranges asks for another job."""

    idle_timeout: Annotated[Duration, Field(gt=0)] = 600.0  # seconds an idle pilot waits for a job, then ends


class QueueConfig(Strict):
    """One batch queue (a Slurm partition or LSF queue) and how workers are shaped for it."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    batch: str  # a batch plugin: an installed entry point of "harvester_edge.batch" (slurm, lsf, local, or another's)
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    reservation: str | None = None
    nodes_min: PositiveInt = 1
    nodes_max: PositiveInt = 1
    ranks_per_node: PositiveInt = 1
    cores_per_node: PositiveInt = 1
    memory_mb: PositiveInt | None = None  # per node
    walltime_min: IntDuration = 600
    walltime_max: IntDuration = 3600
    max_queued_workers: int = Field(default=2, ge=0)
    max_running_workers: PositiveInt = 4
    launcher: Literal["srun", "mpirun", "none"] = "mpirun"
    mpi_type: str = "pmix"
    drain_warning: IntDuration = 120  # seconds before the walltime the pilot is told to drain
    extra_directives: list[str] = []
    env_setup: list[str] = []
    template: Path | None = None
    command_timeout: Annotated[Duration, Field(gt=0)] = 30.0  # seconds a batch command may take
    backfill: bool = False  # shape workers to the nodes idle now (Slurm: sinfo), so a fitting worker starts at once
    # brokerage (README "Brokerage by resources"): the memory one rank may use, sent with every job request so the
    # central service hands this queue only tasks whose memory estimate fits (a high-memory queue sets the min)
    rank_memory_min_mb: int = Field(default=0, ge=0)
    rank_memory_max_mb: PositiveInt | None = None
    monitor_interval: Annotated[Duration, Field(gt=0)] | None = None  # the pilot's memory/CPU sampling, seconds
    # pilot health checks (README "Pilot health checks"); unset: the pilot's defaults (30 min, 1024 MB)
    looping_timeout: Annotated[Duration, Field(gt=0)] | None = None  # no output and no CPU progress: killed
    min_free_disk_mb: int | None = Field(default=None, ge=0)  # the pilot drains below this free in the work dir
    # pledges (README "Pledges and work shortage"): during a WORK_SHORTAGE an opportunistic queue gets no new jobs
    # or workers, and a queue with pledged_cores keeps its running + queued cores within the pledge
    pledged_cores: PositiveInt | None = None
    opportunistic: bool = False
    persistent: PersistentConfig | None = None  # set: pilots take new jobs instead of ending when out of ranges

    def pilot_settings(self) -> dict[str, float]:
        """The pilot settings of this queue that override the pilot's defaults (jumbo.protocol.PILOT_DEFAULTS)."""
        fields = {
            "monitor_interval": self.monitor_interval,
            "looping_timeout": self.looping_timeout,
            "min_free_disk_mb": self.min_free_disk_mb,
        }
        if self.persistent is not None:
            fields["idle_timeout"] = self.persistent.idle_timeout
        return {name: float(value) for name, value in fields.items() if value is not None}

    @field_validator("batch")
    @classmethod
    def _installed_plugin(cls, name: str) -> str:
        """Checked against what is installed, so a plugin of another package is as good as the shipped ones."""
        installed = sorted(known_plugins())
        if name not in installed:
            raise ValueError(
                f"batch plugin {name!r} is not installed; installed: "
                f"{', '.join(installed) or 'none (is harvester-edge installed? run pip install -e .)'} "
                f"(entry points of group {ENTRY_POINT_GROUP!r}); use one of them or install the package that "
                f"provides {name!r}"
            )
        return name

    @model_validator(mode="after")
    def _ranges(self) -> QueueConfig:
        if self.nodes_min > self.nodes_max:
            raise ValueError(f"nodes_min ({self.nodes_min}) must not exceed nodes_max ({self.nodes_max})")
        if self.walltime_min > self.walltime_max:
            raise ValueError(f"walltime_min ({self.walltime_min}s) must not exceed walltime_max ({self.walltime_max}s)")
        if self.ranks_per_node > self.cores_per_node * 8:
            raise ValueError(
                f"ranks_per_node ({self.ranks_per_node}) is far above cores_per_node ({self.cores_per_node})"
            )
        if self.rank_memory_max_mb is not None and self.rank_memory_min_mb > self.rank_memory_max_mb:
            raise ValueError(
                f"rank_memory_min_mb ({self.rank_memory_min_mb}) must not exceed rank_memory_max_mb "
                f"({self.rank_memory_max_mb})"
            )
        return self

    @property
    def brokerage(self) -> dict[str, int]:
        """What a job request says about this queue's ranks (the central service's fit): memory (MB a rank may
        use, PanDA's getJob `mem`), memory_min and core_count (cores per rank); empty when the queue declares no
        rank memory (then every job fits, as before)."""
        if self.rank_memory_max_mb is None and not self.rank_memory_min_mb:
            return {}
        out = {"memory_min": self.rank_memory_min_mb, "core_count": self.cores_per_rank}
        if self.rank_memory_max_mb is not None:
            out["memory"] = self.rank_memory_max_mb
        return out

    @property
    def cores_per_rank(self) -> int:
        return max(1, self.cores_per_node // self.ranks_per_node)


class PathsConfig(Strict):
    """Where the appliance keeps its state; relative paths are relative to the config file's folder."""

    work_dir: Path
    db: Path | None = None  # default <work_dir>/harvester.db
    access_points: Path | None = None  # default <work_dir>/workers
    logs: Path | None = None  # default <work_dir>/logs
    archives: Path | None = None  # ended access points' logs and reports as tar.gz; unset: none are kept


class AgentIntervals(Strict):
    fetcher: Duration = 10.0
    submitter: Duration = 5.0
    monitor: Duration = 5.0
    feeder: Duration = 1.0
    propagator: Duration = 2.0
    sweeper: Duration = 30.0
    credentials: Duration = 300.0
    alerts: Duration = 15.0
    paylogs: Duration = 5.0  # payload log lines shipped to the central service (agents/paylogs.py)
    persistent: Duration = 0.25  # idle persistent pilots asking for a job (none: the cycle reads nothing)


class DaemonConfig(Strict):
    threads: PositiveInt = 8
    stop_timeout: Duration = 30.0  # SIGTERM: how long running cycles may take to finish
    lease_time: Duration = 300.0
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = False
    on_network_fs: Literal["warn", "refuse"] = "warn"
    cleanup_delay: Duration = 86400.0  # finished access points are removed after this
    keep_history: Duration = 604800.0  # ended jobs, their workers and ranges, sent messages are forgotten after this
    archive_max_mb: PositiveInt = 64  # cap of one access point's archive (paths.archives); logs keep their ends
    heartbeat_timeout: Duration = 1800.0  # a running worker whose pilot heartbeat is older is killed
    queued_timeout: Duration = 172800.0  # a worker queued longer than this is cancelled


Severity = Literal["info", "warning", "critical"]


class WebhookConfig(Strict):
    """Where alert messages go: a Slack/Mattermost incoming webhook (`{"text": ...}`) or any HTTP endpoint that
    takes the generic JSON message (see harvester_edge/alerts/messages.py)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    url: str  # may hold a secret (Slack's do): logs and traces name the webhook, never its URL
    format: Literal["slack", "json"] = "json"
    timeout: Annotated[Duration, Field(gt=0, le=60)] = 5.0  # seconds one delivery may take
    max_messages: PositiveInt = 10  # rate limit of this webhook: at most max_messages ...
    per: Annotated[Duration, Field(gt=0)] = 60.0  # ... per this many seconds; the rest wait their turn
    headers: dict[str, str] = {}

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
            raise ValueError("expected an http:// or https:// URL such as https://hooks.slack.com/services/T/B/X")
        return url


class AlertRule(Strict):
    enabled: bool = True
    severity: Severity = "warning"
    # flap damping: the condition must hold this long before the alert fires (it is "pending" meanwhile) ...
    fire_after: Annotated[Duration, Field(ge=0)] = 0.0
    # ... and be clear this long before a firing alert resolves (a condition that blinks sends nothing new)
    resolve_after: Annotated[Duration, Field(ge=0)] = 0.0


class CentralUnreachableRule(AlertRule):
    severity: Severity = "critical"
    seconds: Annotated[Duration, Field(gt=0)] = 300.0  # no answer from the central service for this long


class OutboxRejectedRule(AlertRule):
    count: PositiveInt = 1  # messages the central service refused for good ...
    window: Annotated[Duration, Field(gt=0)] = 3600.0  # ... within this long


class QueuePausedRule(AlertRule):
    pass  # the submitter's own pause (PERMANENT_FAILURES_PAUSE refused submissions in PAUSE_WINDOW)


class CredentialExpiringRule(AlertRule):
    hours: float = Field(default=24.0, gt=0)  # the token file or a token key expires within this many hours
    # remote central service: alert this long before the token in use expires (None: a sixth of its lifetime, at
    # most `hours`: a 1-hour token renewed at 20 minutes left alerts at 10, a 30-day one a day before)
    token_lead: Annotated[Duration, Field(gt=0)] | None = None


class AgentStalledRule(AlertRule):
    severity: Severity = "critical"
    intervals: PositiveInt = 5  # an agent without a completed cycle for this many of its intervals


class TaskFailedRule(AlertRule):
    pass


class WorkerFailuresRule(AlertRule):
    percent: float = Field(default=50.0, gt=0, le=100)  # failed share of the workers that ended ...
    window: Annotated[Duration, Field(gt=0)] = 3600.0  # ... within this long ...
    min_workers: PositiveInt = 4  # ... once at least this many ended (a single failure is not a rate)


class AlertRules(Strict):
    central_unreachable: CentralUnreachableRule = CentralUnreachableRule()
    outbox_rejected: OutboxRejectedRule = OutboxRejectedRule()
    queue_paused: QueuePausedRule = QueuePausedRule()
    credential_expiring: CredentialExpiringRule = CredentialExpiringRule()
    agent_stalled: AgentStalledRule = AgentStalledRule()
    task_failed: TaskFailedRule = TaskFailedRule()
    worker_failures: WorkerFailuresRule = WorkerFailuresRule()


class AlertsConfig(Strict):
    """Alert rules (evaluated by the alerts agent) and the webhooks their firing/resolved messages go to."""

    webhooks: list[WebhookConfig] = []
    rules: AlertRules = AlertRules()
    retry_max: Annotated[Duration, Field(gt=0)] = 600.0  # longest wait between tries of a failing webhook
    give_up_after: Annotated[Duration, Field(gt=0)] = 86400.0  # an undelivered message is dropped after this

    @model_validator(mode="after")
    def _unique_webhooks(self) -> AlertsConfig:
        names = [w.name for w in self.webhooks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"webhook names must be unique, repeated: {', '.join(dupes)}")
        return self


class SiteConfig(Strict):
    site: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    central: CentralSettings = CentralSettings()
    queues: list[QueueConfig] = Field(min_length=1)
    paths: PathsConfig
    agents: AgentIntervals = AgentIntervals()
    daemon: DaemonConfig = DaemonConfig()
    alerts: AlertsConfig = AlertsConfig()
    source: Path | None = None  # the file it was loaded from (set by load_config)

    @model_validator(mode="after")
    def _unique_queues(self) -> SiteConfig:
        names = [q.name for q in self.queues]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"queue names must be unique, repeated: {', '.join(dupes)}")
        return self

    def queue(self, name: str) -> QueueConfig:
        for queue in self.queues:
            if queue.name == name:
                return queue
        raise ConfigError(f"{self.source}: no queue named {name!r}; known: {', '.join(q.name for q in self.queues)}")

    @property
    def db_path(self) -> Path:
        return self.paths.db or self.paths.work_dir / "harvester.db"

    @property
    def access_points(self) -> Path:
        return self.paths.access_points or self.paths.work_dir / "workers"

    @property
    def log_dir(self) -> Path:
        return self.paths.logs or self.paths.work_dir / "logs"

    @property
    def lock_path(self) -> Path:
        return self.paths.work_dir / "daemon.lock"


def _resolve(path: Path | None, base: Path) -> Path | None:
    return None if path is None else _resolve_path(path, base)


def _resolve_path(path: Path, base: Path) -> Path:
    path = Path(os.path.expandvars(os.path.expanduser(str(path))))
    return path if path.is_absolute() else (base / path).resolve()


def load_config(path: str | Path) -> SiteConfig:
    """Read, validate and resolve a site config; raises ConfigError that says exactly what is wrong."""
    path = Path(path)
    data, lines = load_yaml_mapping(path, what="site config")
    try:
        config = SiteConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, path, lines, SiteConfig, data)) from None
    base = path.resolve().parent
    override = os.environ.get(WORK_DIR_ENV)
    work_dir = Path(override).resolve() if override else _resolve_path(config.paths.work_dir, base)
    paths = PathsConfig(
        work_dir=work_dir,
        db=_resolve(config.paths.db, base),
        access_points=_resolve(config.paths.access_points, base),
        logs=_resolve(config.paths.logs, base),
        archives=_resolve(config.paths.archives, base),
    )
    central = config.central
    if central.db is None:
        central = central.model_copy(update={"db": work_dir / "central.db"})
    elif isinstance(central.db, str):  # a postgresql:// URL: the service's files go to files_dir or work_dir
        central = central.model_copy(update={"files_dir": _resolve(central.files_dir, base) or work_dir})
    else:
        central = central.model_copy(update={"db": _resolve(central.db, base)})
    queues = [q.model_copy(update={"template": _resolve(q.template, base)}) for q in config.queues]
    return config.model_copy(update={"paths": paths, "central": central, "queues": queues, "source": path})
