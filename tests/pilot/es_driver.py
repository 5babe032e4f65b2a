"""An event-service job through the PanDA pilot's own event-service communication code.

The 3.7 pilot's generic event-service executor talks to an AthenaMP payload over yampl, which a test machine does
not have; the server side of event service is what this test is about. So this driver uses the pilot's
PandaCommunicator (pilot.eventservice.communicationmanager.plugins.pandacommunicator: its getJob, getEventRanges,
updateEventRanges and updateJob requests, over the pilot's https module and curl) and plays the payload: for every
event range it runs the job's transformation (downloaded from its http URL) with FIRST_EVENT/LAST_EVENT, and
reports the ranges as the generic executor does: a zipped output (version 1: {"zipFile": ..., "eventRanges": ...})
for one batch, plain statuses (version 0) for the next, alternately. The last line printed is a JSON summary.
Run it like the launcher (same options); PILOT_NOKILL=1 is required here as well.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import launcher
from pilot.eventservice.communicationmanager.communicationmanager import CommunicationRequest
from pilot.eventservice.communicationmanager.plugins.pandacommunicator import PandaCommunicator
from pilot.util.constants import get_pilot_version
from pilot.util.https import get_panda_server, https_setup
from pilot.util.loggingsupport import establish_logging


def request(kind: str, **attrs) -> CommunicationRequest:
    return CommunicationRequest({"request_type": kind, **attrs})


def run_range(script: Path, rng: dict) -> Path:
    out = script.parent / f"range-{rng['eventRangeID']}.txt"
    env = {**os.environ, "FIRST_EVENT": str(rng["startEvent"]), "LAST_EVENT": str(rng["lastEvent"]), "OUTPUT": str(out)}
    subprocess.run([str(script)], cwd=script.parent, env=env, check=True, stdin=subprocess.DEVNULL)
    return out


def main(argv: list[str]) -> int:
    args = launcher.options(argv)
    workdir = Path(args.workdir or ".").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    os.environ.update(
        {
            "PILOT_HOME": str(workdir),
            "PILOT_USER": args.pilot_user,
            "PANDA_SERVER_URL": get_panda_server(args.url, args.port, update_server=True),
        }
    )
    establish_logging(debug=True, nopilotlog=False)
    https_setup(args, get_pilot_version())
    comm = PandaCommunicator()
    got = comm.get_jobs(
        request(
            CommunicationRequest.RequestType.RequestJobs,
            num_jobs=1,
            site=args.queue,
            job_label=args.job_label,
            node="es-driver",
            queue=args.queue,
        )
    )
    if got.status != 0 or not got.content:
        print(json.dumps({"error": f"no job: {got}"}))
        return 1
    job = got.content[0]
    pid = str(job["PandaID"])
    script = workdir / os.path.basename(job["transformation"])
    with urllib.request.urlopen(job["transformation"], timeout=30) as answer:
        script.write_bytes(answer.read())
    script.chmod(0o755)
    for state in ("starting", "running"):
        comm.update_job({"jobId": pid, "state": state, "siteName": args.queue, "node": "es-driver"})
    versions, n_events, batch = [], 0, 0
    while True:
        events = comm.get_events(
            request(
                CommunicationRequest.RequestType.RequestEvents,
                jobid=pid,
                jobsetid=job["jobsetID"],
                taskid=job["taskID"],
                num_ranges=2,
            )
        )
        if events.status != 0:
            print(json.dumps({"error": f"getEventRanges failed: {events}"}))
            return 1
        ranges = events.content or []
        if not ranges:
            break
        outputs = [run_range(script, r) for r in ranges]
        reports = [{"eventRangeID": r["eventRangeID"], "eventStatus": "finished"} for r in ranges]
        if batch % 2 == 0:  # the generic executor's zipped-output message (version 1)
            data = b"".join(p.read_bytes() for p in outputs)
            message = {
                "version": 1,
                "eventRanges": json.dumps(
                    [
                        {
                            "zipFile": {
                                "numEvents": len(ranges),
                                "objstoreID": -1,
                                "lfn": f"{pid}.{batch}.zip",
                                "fsize": len(data),
                                "adler32": f"{zlib.adler32(data):08x}",
                                "pathConvention": 1000,
                            },
                            "eventRanges": reports,
                        }
                    ]
                ),
            }
        else:  # plain statuses (version 0)
            message = {"version": 0, "eventRanges": json.dumps(reports)}
        answer = comm.update_events(request(CommunicationRequest.RequestType.UpdateEvents, update_events=message))
        if (
            answer.status != 0
            or not answer.content
            or answer.content.get("StatusCode") != 0
            or not all(answer.content.get("Returns", []))
        ):
            print(json.dumps({"error": f"updateEventRanges refused: {answer.content}"}))
            return 1
        versions.append(message["version"])
        n_events += sum(r["lastEvent"] - r["startEvent"] + 1 for r in ranges)
        batch += 1
    final = comm.update_job(
        {
            "jobId": pid,
            "state": "finished",
            "nEvents": n_events,
            "siteName": args.queue,
            "node": "es-driver",
            "transExitCode": 0,
            "pilotErrorCode": 0,
        }
    )
    print(
        json.dumps(
            {
                "PandaID": int(pid),
                "eventService": job.get("eventService"),
                "versions": versions,
                "nEvents": n_events,
                "final": final,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
