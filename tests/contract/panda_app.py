"""The real PanDA server's /api/v1 (panda-server 1.0.4) on 127.0.0.1, its database layer replaced by a recording fake.

Runs in the panda-server virtualenv (scripts/panda-server-venv), never in the main environment:
    PANDA_HOME=<venv> <venv>/bin/python tests/contract/panda_app.py PORT_FILE CALLS_FILE [--tls CERT KEY CA]
It imports the server's own WSGI entry point (pandaserver/server/panda.py: script-name parsing, the allowed-method
check, JSON-vs-form parameter parsing) and its api/v1 modules (request_validation: unknown parameter ->
"Argument error", wrong type -> "Type error"); only these are replaced:
- the database: TaskBuffer (taskBuffer global, injected BEFORE panda.py is imported) by FakeTaskBuffer, which
  answers from a small in-memory state and appends every call (method, args) as one JSON line to CALLS_FILE;
- the site mapper cache (it reads the DB), the token cache (it reads files of a production host);
- the Apache layer: mod_ssl/gridsite would put the client's DN and VOMS role into the environment after x509 or
  token authentication. Here a request must carry `Authorization: Bearer <TOKEN>` (env PANDA_CONTRACT_TOKEN) and
  `Origin: <ORIGIN>` (env PANDA_CONTRACT_ORIGIN) when those are set, else it is answered 403 like the server's
  "Token authentication failed"; an accepted one gets a production DN and role (what acquire_jobs & co. need).
- the answer of a real job (acquire_jobs): a real JobSpec with real FileSpecs, turned into the pilot's dictionary
  by the server's own Protocol.Response.appendJob.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

CALLS_FILE = None
LOCK = threading.Lock()
PRODUCTION_DN = "/DC=ch/DC=cern/OU=Organic Units/OU=Users/CN=harvester-edge contract test"

# the in-memory "database"
JOB_STATUS = {}  # PandaID -> (status, attemptNr)
EVENTS = {"available": int(os.environ.get("PANDA_CONTRACT_RANGES", "3")), "next": 1}
JOBS_LEFT = [int(os.environ.get("PANDA_CONTRACT_JOBS", "1000000"))]  # jobs the fake hands out in all


def record(method: str, args, kwargs) -> None:
    def plain(value):
        try:
            json.dumps(value)
            return value
        except TypeError:
            return repr(value)

    with LOCK, open(CALLS_FILE, "a") as fh:
        fh.write(
            json.dumps(
                {"method": method, "args": [plain(a) for a in args], "kwargs": {k: plain(v) for k, v in kwargs.items()}}
            )
            + "\n"
        )


def make_job(panda_id: int):
    from pandaserver.taskbuffer.FileSpec import FileSpec
    from pandaserver.taskbuffer.JobSpec import JobSpec

    job = JobSpec()
    job.PandaID = panda_id
    job.jediTaskID = 4242
    job.jobsetID = 77
    job.taskID = 4242
    job.jobName = f"edge.contract.{panda_id}"
    job.transformation = "https://example.org/trf/run.sh"
    job.jobParameters = "--events 100 --seed 7"
    job.prodSourceLabel = "managed"
    job.computingSite = "EDGE_SITE"
    job.attemptNr = 1
    job.coreCount = 8
    job.maxWalltime = 7200
    job.minRamCount = 16000
    job.maxCpuCount = 3600
    job.maxDiskCount = 1000
    job.currentPriority = 900
    job.eventService = 4  # jumbo
    job.resource_type = "MCORE"
    job.cloud = "EDGE"
    job.homepackage = "AtlasOffline/23.0"
    job.AtlasRelease = "Atlas-23.0"
    for kind, lfn in (("input", "EVNT.1.pool.root"), ("output", "HITS.1.pool.root"), ("log", "log.1.tgz")):
        spec = FileSpec()
        spec.type, spec.lfn, spec.GUID, spec.scope = kind, lfn, f"guid-{kind}", "mc"
        spec.dataset = spec.dispatchDBlock = spec.prodDBlock = spec.destinationDBlock = f"ds.{kind}"
        spec.fsize, spec.checksum = 1000, "ad:00000001"
        job.addFile(spec)
    JOB_STATUS[panda_id] = ("sent", 1)
    return job


class FakeTaskBuffer:
    """What the api/v1 functions call on the database layer; every call is recorded."""

    def __init__(self) -> None:
        self.next_panda_id = 9000001

    def __getattr__(self, name):
        def unknown(*args, **kwargs):
            record(name, args, kwargs)
            raise RuntimeError(f"FakeTaskBuffer.{name} is not faked: the contract harness needs it")

        return unknown

    def init(self, *args, **kwargs):
        return None

    def get_ban_users(self):
        return True, {}

    def get_special_dispatch_params(self):
        return True, {
            "allowProxy": ["harvester-edge contract test"],
            "allowTokenKey": ["harvester-edge contract test"],
            "tokenKeys": {"pilot-edge": {"latest": "key-latest", "fullList": ["key-latest", "key-old"]}},
        }

    def getJobs(self, n_jobs, site_name, *args):
        record("getJobs", (n_jobs, site_name, *args), {})
        if site_name == "EMPTY_SITE" or JOBS_LEFT[0] <= 0:
            return [0, None, {}]
        jobs = []
        for _ in range(min(int(n_jobs or 1), 2, JOBS_LEFT[0])):
            JOBS_LEFT[0] -= 1
            jobs.append(make_job(self.next_panda_id))
            self.next_panda_id += 1
        return jobs + [len(jobs), None, {}]

    def peekJobs(self, job_ids, **kwargs):
        record("peekJobs", (job_ids,), kwargs)
        out = []
        for jid in job_ids:
            if int(jid) in JOB_STATUS:
                from pandaserver.taskbuffer.JobSpec import JobSpec

                job = JobSpec()
                job.PandaID, (job.jobStatus, job.attemptNr) = int(jid), JOB_STATUS[int(jid)]
                out.append(job)
            else:
                out.append(None)
        return out

    def updateJobStatus(self, job_id, status, param, update_state_change, attempt_nr):
        record(
            "updateJobStatus",
            (job_id, status, {k: str(v) for k, v in param.items()}, update_state_change, attempt_nr),
            {},
        )
        if int(job_id) == 666:
            return {"command": "tobekilled"}
        JOB_STATUS[int(job_id)] = (status, attempt_nr or 1)
        return {"command": "NULL"}

    def checkEventsAvailability(self, job_id, jobset_id, task_id):
        record("checkEventsAvailability", (job_id, jobset_id, task_id), {})
        return EVENTS["available"]

    def getEventRanges(self, job_id, jobset_id, task_id, n_ranges, accept_json, scattered, segment_id):
        record("getEventRanges", (job_id, jobset_id, task_id, n_ranges, accept_json, scattered, segment_id), {})
        out = []
        for _ in range(min(int(n_ranges), EVENTS["available"])):
            i = EVENTS["next"]
            EVENTS["next"] += 1
            EVENTS["available"] -= 1
            out.append(
                {
                    "eventRangeID": f"{task_id}-{job_id}-1-{i}-1",
                    "startEvent": (i - 1) * 10,
                    "lastEvent": i * 10 - 1,
                    "LFN": "EVNT.1.pool.root",
                    "GUID": "guid-input",
                    "scope": "mc",
                }
            )
        return out

    def updateEventRanges(self, event_ranges, version):
        record("updateEventRanges", (event_ranges, version), {})
        fail = os.environ.get("PANDA_CONTRACT_RANGES_FAIL")
        if fail == "raise":  # the DB layer fails: the server's TimedMethod thread dies, it answers "TimeOut"
            raise RuntimeError("database connection lost")
        if fail == "none":  # no result: the api function fails otherwise than on its set literal (another 500)
            return None
        ranges = json.loads(event_ranges)
        return [True] * len(ranges), {}

    def updateWorkerPilotStatus(self, worker_id, harvester_id, status, node_id):
        record("updateWorkerPilotStatus", (worker_id, harvester_id, status, node_id), {})
        return True

    def updateWorkers(self, harvester_id, data, use_commit=True):
        record("updateWorkers", (harvester_id, data), {})
        return [True] * len(data)

    def harvesterIsAlive(self, user, host, harvester_id, data):
        record("harvesterIsAlive", (user, host, harvester_id, data), {})
        return "succeeded"

    def storePilotLog(self, *args):
        record("storePilotLog", args, {})

    def addMetadata(self, *args):
        record("addMetadata", args, {})
        return [True]

    def insertJobOutputReport(self, *args, **kwargs):  # AdderGen.dump_file_report of a finished/failed job
        record("insertJobOutputReport", args, kwargs)
        return True

    def addStdOut(self, *args):
        record("addStdOut", args, {})


class FakeSiteMapperCache:
    def __init__(self) -> None:
        from pandaserver.taskbuffer.SiteSpec import SiteSpec

        site = SiteSpec()
        site.sitename = site.nickname = "EDGE_SITE"
        site.status = "online"
        site.ddm_endpoints_input, site.ddm_endpoints_output = {}, {}
        site.setokens_input, site.setokens_output, site.ddm_input, site.ddm_output = {}, {}, {}, {}
        self.cachedObj = self
        self.site = site

    def update(self):
        return None

    def get_object(self):
        return self

    def release_object(self):
        return None

    def getSite(self, name):
        return self.site

    def resolveNucleus(self, value):
        return value


class FakeTokenCache:
    def get_access_token(self, name):
        record("token_cache.get_access_token", (name,), {})
        return f"access-token-for-{name}"


def apache_layer(app, token: str | None, origin: str | None):
    """What mod_ssl + the token check put in front of panda.py: the DN and role of an authenticated client."""

    def wrapped(environ, start_response):
        path = environ.get("PATH_INFO", "")
        environ["SCRIPT_NAME"], environ["PATH_INFO"] = path, ""
        if not environ.get("CONTENT_LENGTH"):  # mod_wsgi leaves it out when there is no body; wsgiref sets ''
            environ.pop("CONTENT_LENGTH", None)
        record(
            "http",
            (environ["REQUEST_METHOD"], path),
            {
                "content_type": environ.get("CONTENT_TYPE"),
                "accept": environ.get("HTTP_ACCEPT"),
                "origin": environ.get("HTTP_ORIGIN"),
                "query": environ.get("QUERY_STRING", ""),
                "client_dn": environ.get("SSL_CLIENT_S_DN"),
            },
        )
        if not path.endswith("/system/is_alive"):
            auth = environ.get("HTTP_AUTHORIZATION", "")
            if (token and auth != f"Bearer {token}") or (origin and environ.get("HTTP_ORIGIN") != origin):
                start_response("403 Forbidden", [("Content-Type", "text/plain")])
                return [b"ERROR : Token authentication failed. (contract harness: token or Origin not accepted)"]
            environ.setdefault("SSL_CLIENT_S_DN", PRODUCTION_DN)  # with --tls: the client certificate's subject
            environ["GRST_CRED_0"] = "VOMS /atlas/Role=production"
        return app(environ, start_response)

    return wrapped


class Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass

    def get_environ(self):
        """With --tls, like mod_ssl: HTTPS=on and the verified client certificate's subject as SSL_CLIENT_S_DN."""
        env = super().get_environ()
        getpeercert = getattr(self.connection, "getpeercert", None)
        if getpeercert is not None:
            env["HTTPS"] = "on"
            cert = getpeercert() or {}
            parts = [f"/{k}={v}" for rdn in cert.get("subject", ()) for k, v in rdn]
            if parts:
                env["SSL_CLIENT_S_DN"] = (
                    "".join(parts).replace("/commonName=", "/CN=").replace("/organizationName=", "/O=")
                )
        return env


def main() -> None:
    global CALLS_FILE
    port_file, CALLS_FILE = sys.argv[1], sys.argv[2]
    os.environ.setdefault("PANDA_BEHIND_REAL_LB", "1")  # pandaclient (imported by workflow_api) resolves no host
    import pandaserver.taskbuffer.Initializer as initializer_module
    import pandaserver.taskbuffer.TaskBuffer as task_buffer_module

    initializer_module.initializer.init = lambda *a, **k: None
    task_buffer_module.taskBuffer = FakeTaskBuffer()
    from pandaserver.api.v1 import credential_management_api, pilot_api
    from pandaserver.server import panda  # the real entry point, now bound to the fake

    pilot_api.global_site_mapper_cache = FakeSiteMapperCache()
    credential_management_api.global_token_cache = FakeTokenCache()
    credential_management_api.global_token_cache_config = {"pilot-edge": {"use_token_key": True}}
    app = apache_layer(
        panda.application, os.environ.get("PANDA_CONTRACT_TOKEN"), os.environ.get("PANDA_CONTRACT_ORIGIN")
    )
    server = make_server("127.0.0.1", 0, app, server_class=Server, handler_class=QuietHandler)
    if len(sys.argv) > 3 and sys.argv[3] == "--tls":  # --tls CERT KEY CA: https, a client certificate required
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[4], sys.argv[5])
        context.load_verify_locations(sys.argv[6])
        context.verify_mode = ssl.CERT_REQUIRED
        server.socket = context.wrap_socket(server.socket, server_side=True)
    with open(port_file + ".tmp", "w") as fh:
        fh.write(str(server.server_address[1]))
    os.replace(port_file + ".tmp", port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
