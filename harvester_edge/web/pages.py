"""One build function per page: (service, harvester_db, query params, now, *ids) -> (template, context)."""

from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path
from typing import Any

from harvester_edge.alerts import view as alert_view
from harvester_edge.central import jedilogs
from harvester_edge.central.classify import CLASSES, STATUSES
from harvester_edge.central.errors import CentralError, InvalidInput, NotFound
from harvester_edge.central.paylogs import MAX_GREP, LogFilter
from harvester_edge.central.service import CentralService
from harvester_edge.central.states import RangeStatus
from harvester_edge.central.store import monitor
from harvester_edge.states import WorkerState
from harvester_edge.store import alerts as alert_rows
from harvester_edge.store import jobs as job_rows
from harvester_edge.store import workers as worker_rows
from harvester_edge.store.outbox import depth as outbox_depth

from . import charts, data, pictures
from .tables import view

MAX_PANELS = 8
JEDILOG_SHOWN = 256 * 1024  # bytes of an uploaded log shown on its page
STATE_ORDER = tuple(s.value for s in WorkerState)  # the workers' states, in their life's order


def _harvester(path: Path | None):
    return closing(data.open_harvester(path)) if path and path.exists() else _Null()


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _progress(task: dict) -> float:
    return round(100.0 * task.get("events_finished", 0) / task["n_events"], 1) if task.get("n_events") else 0.0


def dashboard(service: CentralService, hdb: Path | None, params: dict, now: float) -> tuple[str, dict]:
    central = service.db.reader()
    tasks = service.list_tasks()
    by_state: dict[str, int] = {}
    for t in tasks:
        by_state[t["status"]] = by_state.get(t["status"], 0) + 1
        t["progress"] = _progress(t)
    with _harvester(hdb) as hconn:
        cells = data.workers_by_queue(hconn, central)
        outbox = outbox_depth(hconn) if hconn else None
        firing = len(alert_rows.firing(hconn)) if hconn and alert_rows.has_table(hconn) else None
        timelines = pictures.dashboard(hconn, now)
    states = sorted({c["state"] for c in cells}, key=lambda s: (STATE_ORDER.index(s) if s in STATE_ORDER else 99, s))
    pivot: dict[str, dict] = {}
    for c in cells:
        pivot.setdefault(c["queue"], {"queue": c["queue"]})[c["state"]] = c["count"]
    epm = data.events_per_minute(central, now)
    return "dashboard.html", {
        "title": "dashboard",
        "tasks_by_state": by_state,
        "outbox": outbox,
        "alerts_firing": firing,
        "harvester_db": hdb,
        "tasks": view(
            "tasks",
            tasks,
            ["task_id", "name", "status", "n_events", "events_finished", "progress", "n_jobs", "created"],
            params,
            "task_id",
            True,
        ),
        "worker_states": states,
        "worker_rows": list(pivot.values()),
        "epm_chart": charts.bar_chart(epm, "events finished per minute (last 30 min)", width=900),
        "epm_last": epm[-2][1] if len(epm) > 1 else 0,
        "timelines": timelines,
    }


def task(service: CentralService, hdb: Path | None, params: dict, now: float, task_id: int) -> tuple[str, dict]:
    t = service.show_task(task_id)
    central = service.db.reader()
    events = {data.RANGE_NAMES[s]: n for s, n in monitor.events_by_status(central, task_id)}
    t["progress"] = _progress(t)
    with _harvester(hdb) as hconn:
        timelines = pictures.task(central, hconn, t, now)
    return "task.html", {
        "title": f"task {task_id}",
        "task": t,
        "done": params.get("done"),
        "events": events,
        "timelines": timelines,
        "events_chart": charts.bar_chart(sorted(events.items()), "events by state", height=140),
        "jobs": view(
            "jobs",
            t["jobs"],
            [
                "panda_id",
                "status",
                "attempt_nr",
                "site",
                "computing_element",
                "worker_id",
                "n_events",
                "pilot_error_code",
                "dispatcher_error_code",
                "heartbeat",
            ],
            params,
            "panda_id",
        ),
        "errors": view(
            "err", data.task_errors(central, task_id), ["source", "code", "message", "count"], params, "count", True
        ),
    }


def job(service: CentralService, hdb: Path | None, params: dict, now: float, panda_id: int) -> tuple[str, dict]:
    central = service.db.reader()
    j = data.central_job(central, panda_id)
    if j is None:
        raise NotFound(f"job {panda_id} does not exist in the central service")
    with _harvester(hdb) as hconn:
        workers = data.job_workers(hconn, panda_id)
        ranges = data.job_ranges(central, hconn, panda_id, j["task_id"])
        here = job_rows.progress(hconn, panda_id) if hconn is not None else None
        local = [dict(here)] if here else []
    panels: list[dict[str, Any]] = []
    for w in workers[-MAX_PANELS:]:  # the newest workers get plots; the others are listed as links
        ap = Path(w["access_point"])
        samples, problems = data.monitor_samples(ap)
        report, report_problem = data.job_report(ap)
        panels.append(
            {
                "worker": w,
                "files": data.ap_files(ap),
                "report": report,
                "report_problem": report_problem,
                "monitor_problems": problems,
                "rss": charts.line_chart(charts.monitor_series(samples, "rss"), f"worker {w['id']}: RSS per rank", "B"),
                "cpu": charts.line_chart(
                    charts.monitor_series(samples, "cpu"), f"worker {w['id']}: CPU time per rank (s)"
                ),
            }
        )
    with _harvester(hdb) as hconn:
        timelines = pictures.job(hconn, j, workers, now, {p["worker"]["id"]: p["report"] for p in panels})
    pilot = data.pilot_fields(j)
    log_dir = getattr(service, "pilot_log_dir", None)
    pilot["tarball"] = data.find_log_tarball(log_dir, (pilot["log_file"] or {}).get("lfn")) is not None
    return "job.html", {
        "title": f"job {panda_id}",
        "job": j,
        "local": local[0] if local else None,
        "panels": panels,
        "jedilogs": jedilogs.for_job(service.db.path, panda_id, j["task_id"]),
        "timelines": timelines,
        "pilot": pilot,
        "older_workers": workers[:-MAX_PANELS] if len(workers) > MAX_PANELS else [],
        "ranges": view(
            "ranges",
            ranges,
            [
                "process_id",
                "start_event",
                "last_event",
                "status",
                "attempt_nr",
                "failures",
                "error_code",
                "error_diag",
                "harvester_state",
                "worker",
            ],
            params,
            "process_id",
        ),
    }


def jedilog(service: CentralService, hdb: Path | None, params: dict, now: float, name: str) -> tuple[str, dict]:
    """A log uploaded with file_server/upload_jedi_log (central/jedilogs.py: safe names, read without links)."""
    text, size = jedilogs.read(service.db.path, name, JEDILOG_SHOWN)
    return "jedilog.html", {
        "title": f"log {name}",
        "name": name,
        "text": text,
        "size": size,
        "shown": JEDILOG_SHOWN,
        "cut": size > JEDILOG_SHOWN,
    }


def worker(service: CentralService, hdb: Path | None, params: dict, now: float, worker_id: int) -> tuple[str, dict]:
    with _harvester(hdb) as hconn:
        w = data.worker(hconn, worker_id)
        if w is None:
            raise NotFound(
                f"worker {worker_id} is not in the harvester DB {hdb} (the monitor shows the workers "
                f"of the harvester on this machine)"
            )
        history = data.state_history(hconn, "workers", worker_id)
        jobs = data.worker_jobs(hconn, worker_id)
        archive = data.worker_archive(hconn, worker_id)
    ap = Path(w["access_point"])
    files = data.ap_files(ap)
    shown = {}
    for name in files["script"] + files["output"]:
        shown[name] = data.text_file(ap, name, 20_000) or {"unreadable": "gone while the page was built"}
    heartbeat, heartbeat_problem = data.heartbeat(ap)
    return "worker.html", {
        "title": f"worker {worker_id}",
        "w": w,
        "history": history,
        "jobs": jobs,
        "files": files,
        "shown": shown,
        "heartbeat": heartbeat,
        "heartbeat_problem": heartbeat_problem,
        "pilot_files": data.pilot_files_state(ap),
        "archive": archive,
    }


def worker_file(
    service: CentralService, hdb: Path | None, params: dict, now: float, worker_id: int, name: str
) -> tuple[str, dict]:
    with _harvester(hdb) as hconn:
        w = data.worker(hconn, worker_id)
        jobs = data.worker_jobs(hconn, worker_id)
    if w is None:
        raise NotFound(f"worker {worker_id} is not in the harvester DB {hdb}")
    shown = data.text_file(Path(w["access_point"]), name) if data.plain_name(name) else None
    if shown is None:
        raise NotFound(f"no file {name!r} in the access point of worker {worker_id}")
    return "file.html", {"title": f"worker {worker_id}: {name}", "w": w, "jobs": jobs, "name": name, **shown}


def errors(service: CentralService, hdb: Path | None, params: dict, now: float) -> tuple[str, dict]:
    central = service.db.reader()
    rules = service.list_errors()
    groups = data.error_groups(central)
    for g in groups:
        g["class"] = data.classification(g, rules)
    suggestion, problem = _suggestion(service, params.get("suggest"))
    editing = next((r for r in rules if str(r["id"]) == params.get("edit")), None)
    history = service.error_history(limit=50)
    return "errors.html", {
        "title": "errors",
        "classes": CLASSES,
        "statuses": STATUSES,
        "done": params.get("done"),
        "suggestion": suggestion,
        "suggest_problem": problem,
        "editing": editing,
        "ranked": sorted((r for r in rules if r["status"] == "suggested"), key=lambda r: (-r["hits"], r["id"])),
        "history": history,
        "groups": view(
            "groups", groups, ["source", "code", "message", "count", "class", "tasks"], params, "count", True
        ),
        "rules": view(
            "rules", rules, ["id", "source", "code", "diag_pattern", "class", "status", "hits", "example"], params, "id"
        ),
    }


def _suggestion(service: CentralService, panda_id: str | None) -> tuple[dict | None, str | None]:
    """The rule pre-filled from job ?suggest=PANDAID, or why there is none."""
    if not panda_id:
        return None, None
    if not (panda_id.isascii() and panda_id.isdigit() and len(panda_id) < 19):
        return None, f"job id {panda_id!r:.40} is not a PandaID"
    try:
        return service.suggest_error_rule(int(panda_id)), None
    except CentralError as exc:
        return None, str(exc)


def sites(service: CentralService, hdb: Path | None, params: dict, now: float) -> tuple[str, dict]:
    central = service.db.reader()
    with _harvester(hdb) as hconn:
        queues = data.queues(hconn)
        workers = [dict(r) for r in worker_rows.listing(hconn)] if hconn is not None else []
        timelines = pictures.sites(hconn, now)
        pledge_usage = data.pledge_usage(hconn, now)
    harvesters = data.harvesters(central)
    for h in harvesters:
        try:
            h["attrs"] = json.loads(h["attrs"] or "{}")
        except ValueError:
            pass
        h["age"] = now - h["last_heartbeat"] if h["last_heartbeat"] else None
    return "sites.html", {
        "title": "sites and queues",
        "queues": queues,
        "harvesters": harvesters,
        "timelines": timelines,
        "workers": view(
            "workers",
            workers,
            ["id", "queue", "state", "batch_id", "exit_code", "submitted_at", "started_at", "ended_at"],
            params,
            "id",
            True,
        ),
        "sites": data.sites(central),
        "harvester_db": hdb,
        "ready": int(RangeStatus.READY),
        "pledges": pledge_usage,
        "shortage": service.work_shortage(),
    }


def alerts_data(hdb: Path | None, everything: bool) -> dict[str, Any]:
    """The alert states and webhook deliveries as the daemon's alerts agent keeps them (harvester_edge.alerts.view)."""
    with _harvester(hdb) as hconn:
        if hconn is None or not alert_rows.has_table(hconn):
            return {"alerts": [], "deliveries": {}, "note": f"no alerts in the harvester DB {hdb} (yet)"}
        return {"alerts": alert_view.alert_list(hconn, everything), "deliveries": alert_view.deliveries(hconn)}


def alerts(service: CentralService, hdb: Path | None, params: dict, now: float) -> tuple[str, dict]:
    everything = params.get("all") == "1"
    found = alerts_data(hdb, everything)
    rows = [
        {
            **a,
            "key": a["key"] or "-",
            "value": "" if a["value"] is None else f"{a['value']:g}",
            "threshold": "" if a["threshold"] is None else f"{a['threshold']:g}",
            "age": now - a["since"],
        }
        for a in found["alerts"]
    ]
    return "alerts.html", {
        "title": "alerts",
        "everything": everything,
        "note": found.get("note"),
        "firing": sum(1 for a in rows if a["state"] == "firing"),
        "alerts": view(
            "alerts",
            rows,
            ["rule", "key", "state", "severity", "value", "threshold", "since", "resolved_at", "summary"],
            params,
        ),
        "deliveries": found["deliveries"],
    }


PAYLOG_SHOWN = 500  # newest payload log lines on the logs page


def _int_param(params: dict, name: str) -> int | None:
    value = str(params.get(name) or "").strip()
    if not value:
        return None
    if not (value.isascii() and value.isdigit() and len(value) < 19):
        raise InvalidInput(f"{name} must be a whole number, got {value[:40]!r}")
    return int(value)


def logs(service: CentralService, hdb: Path | None, params: dict, now: float) -> tuple[str, dict]:
    """Payload log lines (central/paylogs.py), newest last, filtered by task, job, rank, stream and text; the page
    refreshes itself (follow)."""
    flt = LogFilter(
        task_id=_int_param(params, "task"),
        panda_id=_int_param(params, "job"),
        rank=_int_param(params, "rank"),
        stream=str(params.get("stream") or "") or None,
        grep=str(params.get("grep") or "")[:MAX_GREP] or None,
        limit=PAYLOG_SHOWN,
        newest=True,
    )
    filters: dict[str, Any] = {
        "task": flt.task_id,
        "job": flt.panda_id,
        "rank": flt.rank,
        "stream": flt.stream,
        "grep": flt.grep,
    }
    got = service.payload_logs(flt)
    title = "payload logs" + (f" of task {filters['task']}" if filters["task"] is not None else "")
    extra = {} if "refresh" in params else {"refresh": 5}  # following: a shorter refresh than other pages
    return "logs.html", {
        **extra,
        "title": title + (f", job {filters['job']}" if filters["job"] is not None else ""),
        "filters": filters,
        "lines": got["lines"],
        "truncated": got["truncated"],
        "shown": PAYLOG_SHOWN,
    }
