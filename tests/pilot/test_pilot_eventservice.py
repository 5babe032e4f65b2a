"""An event-service job through getEventRanges/updateEventRanges (versions 0 and 1) with the pilot's own code."""

from __future__ import annotations

import json

from .harness import ES_DRIVER

RANGE_TRF = '#!/bin/sh\n# processes events FIRST_EVENT..LAST_EVENT\necho "$FIRST_EVENT $LAST_EVENT" > "$OUTPUT"\n'


def test_event_service_job(trusted_site):
    site = trusted_site
    url = site.trf.add("es.sh", RANGE_TRF)
    task_id = site.central.service.submit_task(
        {
            "kind": "eventservice",
            "name": "es",
            "transformation": url,
            "events": 20,
            "events_per_range": 3,
            "jobs": 1,
            "max_attempts": 2,
        }
    )
    run = site.run(script=ES_DRIVER, name="es")
    assert run.returncode == 0, run.output[-4000:]
    summary = json.loads(run.output.strip().splitlines()[-1])
    assert summary["eventService"] == "True" and summary["nEvents"] == 20
    assert 0 in summary["versions"] and 1 in summary["versions"]  # both report formats went through
    assert summary["final"]["StatusCode"] == "0" or summary["final"]["StatusCode"] == 0
    shown = site.central.service.show_task(task_id)
    assert shown["status"] == "finished" and shown["ranges"] == {"finished": 7} and shown["events_finished"] == 20
    [job] = shown["jobs"]
    assert job["status"] == "finished"
