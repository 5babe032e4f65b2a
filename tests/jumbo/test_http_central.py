"""HTTP mode against the project's own central service (harvester_edge.central on a real uvicorn server)."""

from __future__ import annotations

import pytest

from jumbo import protocol

pytestmark = pytest.mark.mpi


def test_pilot_against_the_embedded_central_service(mpi, ap, h, central):
    svc = central.service
    args = dict(h.SIM_ARGS)
    payload = {"kind": "python", "callable": "jumbo.payloads:simulate", "args": args}
    task_id = svc.submit_task(
        {
            "name": "jumbo-http",
            "payload": payload,
            "events": 120,
            "events_per_range": 5,
            "seconds_per_event": 0.01,
            "jobs": 1,
            "max_attempts": 2,
        }
    )
    [job] = svc.acquire_jobs("SITE", n_jobs=1)
    spec_job = {
        "PandaID": job["PandaID"],
        "taskID": job["taskID"],
        "jobsetID": job["jobsetID"],
        "payload": {**job["payload"], "suffix": ".npy"},
    }  # the central's payload dict passes through
    h.write_spec(ap, [spec_job], mode="http", central_url=central.url, n_ranges=4)
    pilot = h.PilotRun(ap, 2)
    assert pilot.wait() == 0, pilot.output()
    shown = svc.show_task(task_id)
    assert shown["ranges"] == {"finished": 24} and shown["events_finished"] == 120, shown
    attrs = protocol.read_worker_attributes(ap)
    assert attrs["jobs"][str(job["PandaID"])]["nEventsFinished"] == 120 and not attrs["errors"]
    files = protocol.read_json(attrs["jobs"][str(job["PandaID"])]["manifest"])["files"]
    assert len(files) == 24
    h.check_finished(files, task_id, args)
