"""The central-DB query the alerts agent reads (task_failed), on SQLite and PostgreSQL alike."""

from __future__ import annotations

from harvester_edge.central.store import monitor, tasks

from .conftest import task_dict


def test_failed_tasks_lists_the_failed_ones_with_their_diag(service):
    keep = service.submit_task(task_dict(events=10))
    doomed = service.submit_task(task_dict(events=10))
    assert list(monitor.failed_tasks(service.db.reader())) == []
    service.db.write(tasks.close, doomed, "failed", "too many job failures", 1_800_000_100.0)
    rows = [tuple(r) for r in monitor.failed_tasks(service.db.reader())]
    assert [(r[0], r[2], r[3]) for r in rows] == [(doomed, "too many job failures", 1_800_000_100.0)]
    assert keep not in [r[0] for r in rows]
    service.retry_task(doomed)
    assert list(monitor.failed_tasks(service.db.reader())) == []
