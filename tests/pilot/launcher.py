"""Launch the PanDA pilot (panda-pilot from PyPI) the way its repository's top-level pilot.py does.

The package ships the `pilot` modules but not the launcher (PanDAWMS/pilot3 pilot.py). This file does, in the
same order, what that launcher sets up before it hands over to the workflow module, written for the modules
of the installed release (3.7.0.x):
1. parse the pilot's options (the subset our tests use, with the launcher's names and defaults);
2. the args attributes the workflow modules read: threading events (graceful_stop, abort_job, job_aborted),
   signal bookkeeping, timing dict, job_status, harvester mode, last/pilot heartbeat stamps;
3. T0 timing stamps (PILOT_START_TIME, PILOT_MULTIJOB_START_TIME), the main work directory (-a) and cd into it;
4. logging (establish_logging: pilotlog.txt in the work directory);
5. the environment the pilot modules read: PILOT_WORK_DIR, PILOT_HOME, PILOT_SOURCE_DIR, PILOT_USER,
   PILOT_VERSION, PILOT_JOB_STATE, PILOT_WRAP_UP, proxy verification flags, SERVER_UPDATE, PANDA_SERVER_URL,
   QUEUEDATA_SERVER_URL, STORAGEDATA_SERVER_URL ...;
6. main(): https_setup, updateWorkerPilotStatus "started" (with HARVESTER_ID/HARVESTER_WORKER_ID), infosys.init
   (queue must be ACTIVE), PILOT_SITENAME / PILOT_RUCIO_SITENAME, then pilot.workflow.<workflow>.run(args),
   then updateWorkerPilotStatus "finished";
7. wrap up: the exit code from the workflow's traces, converted to the shell code as the pilot does.
Also as pilot 3.11+: PANDA_BASE_URLS (see allow_base_urls) and --output-dir (stage-out to a local directory).
Not done: the CVMFS check (there is none here; NO_CVMFS_OK=1 is set anyway for newer releases), realtime logging,
the message service, cleanup of the work directory (--cleanup defaults to false here: tests read the logs).

One addition for tests, selected by options: --heartbeat N sets the pilot's heartbeat period (config
Pilot.heartbeat, 1800 s by default) so heartbeats happen within a test; --token-refresh N refreshes the token
file every N seconds the way pilot 3.11+ does (GET /server/panda/get_access_token?client_name=pilot_server&
token_key=<key> with the current token; the answer's JSON userProxy replaces the token file), which the 3.7
release from the registry does not do by itself.

SAFETY: the caller must set PILOT_NOKILL=1: without it the pilot kills every process of the user whose parent is 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
import urllib.request

if os.environ.get("PILOT_NOKILL") != "1":
    sys.exit(
        "launcher: refusing to start the pilot without PILOT_NOKILL=1 (its orphan cleanup would kill every "
        "process of this user whose parent is PID 1)"
    )

from pilot.common.exception import PilotException
from pilot.info import infosys
from pilot.util.auxiliary import shell_exit_code
from pilot.util.config import config
from pilot.util.constants import (
    ERRNO_NOJOBS,
    FAILURE,
    PILOT_END_TIME,
    PILOT_MULTIJOB_START_TIME,
    PILOT_START_TIME,
    SERVER_UPDATE_NOT_DONE,
    SUCCESS,
    get_pilot_version,
)
from pilot.util.filehandling import get_pilot_work_dir, mkdirs
from pilot.util.harvester import is_harvester_mode
from pilot.util.https import get_panda_server, https_setup, send_update
from pilot.util.loggingsupport import establish_logging
from pilot.util.timing import add_to_pilot_timing
from pilot.util.workernode import get_node_name


def options(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-q", "--queue", required=True)
    p.add_argument("-a", "--workdir", default="")
    p.add_argument("-d", "--debug", action="store_true")
    p.add_argument("-w", "--workflow", default="generic", choices=["generic"])
    p.add_argument("-l", "--lifetime", type=int, default=324000)
    p.add_argument("-L", "--leasetime", type=int, default=3600)
    p.add_argument("-j", "--joblabel", dest="job_label", default="ptest")
    p.add_argument("-i", "--versiontag", dest="version_tag", default="PR")
    p.add_argument("-z", "--noserverupdate", dest="update_server", action="store_false")
    p.add_argument("-t", "--noproxyverification", dest="verify_proxy", action="store_false")
    p.add_argument("-u", "--verifypayloadproxy", dest="verify_payload_proxy", action="store_false")
    p.add_argument("-v", "--getjobrequests", dest="getjob_requests", type=int, default=2)
    p.add_argument("-x", "--getjobfailures", dest="getjob_failures", type=int, default=5)
    p.add_argument("--url", default="")
    p.add_argument("-p", "--port", default=25443)
    p.add_argument("--queuedata-url", dest="queuedata_url", default="")
    p.add_argument("--storagedata-url", dest="storagedata_url", default="")
    p.add_argument("--pilot-user", dest="pilot_user", default="generic")
    p.add_argument("--job-type", dest="jobtype", default="")
    p.add_argument("--resource-type", dest="resource_type", default="")
    p.add_argument("--use-https", dest="use_https", type=lambda v: v.lower() in ("1", "true", "yes"), default=True)
    p.add_argument("--cleanup", type=lambda v: v.lower() in ("1", "true", "yes"), default=False)
    p.add_argument("--output-dir", dest="output_dir", default="")
    p.add_argument("--heartbeat", type=int, default=0, help="test only: the pilot's heartbeat period (s)")
    p.add_argument(
        "--token-refresh",
        dest="token_refresh",
        type=float,
        default=0,
        help="test only: refresh the token file every N s as pilot 3.11+ does",
    )
    args = p.parse_args(argv)
    # the attributes the pilot's own launcher defines and the workflow modules read
    for name, value in {
        "site": None,
        "resource": None,
        "cacert": None,
        "capath": None,
        "rucio_host": "",
        "redirectstdout": "",
        "country_group": "",
        "working_group": "",
        "allow_other_country": False,
        "allow_same_user": True,
        "pod": False,
        "harvester_workdir": "",
        "harvester_datadir": "",
        "harvester_eventstatusdump": "",
        "harvester_workerattributes": "",
        "harvester_submitmode": "PULL",
        "use_realtime_logging": False,
        "realtime_logging_server": None,
        "realtime_logname": None,
        "input_dir": "",
        "input_destination_dir": "",
        "use_rucio_traces": False,
        "hpc_resource": "",
        "hpc_mode": "manytoone",
        "executor_type": "generic",
        "subscribe_to_msgsvc": False,
        "nopilotlog": False,
    }.items():
        setattr(args, name, value)
    return args


def refresh_token_loop(args: argparse.Namespace, stop: threading.Event) -> None:
    """pilot 3.11's refresh: get_access_token as client_name=pilot_server with the key, rewrite the token file."""
    log = logging.getLogger("launcher.token")
    token_file = os.path.join(os.environ["PANDA_AUTH_DIR"], os.environ["PANDA_AUTH_TOKEN"])
    key_file = os.path.join(os.environ["PANDA_AUTH_DIR"], os.environ["PANDA_AUTH_TOKEN_KEY"])
    while not stop.wait(args.token_refresh):
        try:
            with open(token_file) as fh:
                token = fh.read().strip()
            with open(key_file) as fh:
                key = fh.read().strip()
            url = (
                f"{os.environ['PANDA_SERVER_URL']}/server/panda/get_access_token?client_name=pilot_server&"
                f"token_key={urllib.parse.quote(key)}"
            )
            req = urllib.request.Request(
                url, headers={"Authorization": f"Bearer {token}", "Origin": os.environ["PANDA_AUTH_ORIGIN"]}
            )
            with urllib.request.urlopen(req, timeout=30) as answer:
                data = json.loads(answer.read())  # the pilot parses the answer as JSON, whatever the header
            if data.get("StatusCode") != 0:
                log.warning("token refresh refused: %s", data)
                continue
            tmp = token_file + ".new"
            with open(tmp, "w") as fh:
                fh.write(data["userProxy"])
            os.replace(tmp, token_file)
            log.info("token refreshed (get_access_token as pilot_server)")
        except Exception as exc:
            log.warning("token refresh failed: %s", exc)


def send_worker_status(status: str, args: argparse.Namespace) -> None:
    data = {
        "workerID": os.environ.get("HARVESTER_WORKER_ID"),
        "harvesterID": os.environ.get("HARVESTER_ID"),
        "status": status,
        "site": args.queue,
        "node_id": get_node_name(),
    }
    if data["workerID"] and data["harvesterID"]:
        send_update("updateWorkerPilotStatus", data, args.url, args.port, ipv="IPv4")


def main(args: argparse.Namespace) -> int:
    logger = logging.getLogger("launcher")
    args.graceful_stop = threading.Event()
    args.abort_job = threading.Event()
    args.job_aborted = threading.Event()
    args.retrieve_next_job = True
    args.signal = None
    args.signal_counter = 0
    args.kill_time = 0
    if args.use_https:
        https_setup(args, get_pilot_version())
    args.amq = None
    if args.update_server:
        send_worker_status("started", args)
    try:
        infosys.init(args.queue)
        if infosys.queuedata.state != "ACTIVE":
            logger.critical("queue %s is not ACTIVE", infosys.queuedata.name)
            return 1
    except PilotException as error:
        logger.fatal(error)
        return error.get_error_code()
    args.internet_protocol_version = (infosys.queuedata.params or {}).get("internet_protocol_version", "IPv4")
    os.environ["PILOT_IP_VERSION"] = args.internet_protocol_version
    os.environ["PILOT_RUCIO_SITENAME"] = os.environ.get("PILOT_RUCIO_SITENAME", "") or infosys.queuedata.site
    os.environ["PILOT_SITENAME"] = infosys.queuedata.resource
    workflow = __import__(f"pilot.workflow.{args.workflow}", globals(), locals(), [args.workflow], 0)
    stop = threading.Event()
    if args.token_refresh and os.environ.get("PANDA_AUTH_TOKEN_KEY"):
        threading.Thread(target=refresh_token_loop, args=(args, stop), daemon=True, name="token-refresh").start()
    try:
        trace = workflow.run(args)
    except Exception as exc:
        logger.fatal("main pilot function caught exception: %s", exc)
        trace = None
    stop.set()
    if args.update_server:
        send_worker_status("finished", args)
    return trace


def exit_code(trace) -> int:
    try:
        code = trace.pilot["error_code"]
    except (KeyError, AttributeError, TypeError):
        code = trace
    else:
        if trace.pilot["nr_jobs"] > 0:
            code = SUCCESS if trace.pilot["nr_jobs"] > 1 else code
        elif trace.pilot["state"] == ERRNO_NOJOBS:
            code = ERRNO_NOJOBS
        elif trace.pilot["state"] == FAILURE:
            logging.critical("pilot workflow failure")
    try:
        code = int(code)
    except (TypeError, ValueError):
        code = 1008
    logging.info("pilot has finished (exit code=%s)", code)
    return shell_exit_code(code)


def allow_base_urls() -> None:
    """PANDA_BASE_URLS (comma-separated) as extra base URLs of transformations, as pilot 3.11+ reads it (and its
    -g option): the 3.7 generic user only knows two hard-wired CERN/Google URLs."""
    extra = [u.rstrip("/") for u in os.environ.get("PANDA_BASE_URLS", "").split(",") if u.strip()]
    if not extra:
        return
    from pilot.user.generic import setup as generic_setup

    known = generic_setup.get_valid_base_urls

    def valid_base_urls(order=None):
        urls = extra + [u for u in known() if u not in extra]
        return [order] + [u for u in urls if u != order] if order else urls

    generic_setup.get_valid_base_urls = valid_base_urls


def run(argv: list[str]) -> int:
    args = options(argv)
    allow_base_urls()
    if args.heartbeat:
        config.Pilot.heartbeat = args.heartbeat
    args.last_heartbeat = args.pilot_heartbeat = time.time()
    args.harvester = is_harvester_mode(args)
    args.timing = {}
    args.job_status = {}
    add_to_pilot_timing("0", PILOT_START_TIME, time.time(), args)
    add_to_pilot_timing("1", PILOT_MULTIJOB_START_TIME, time.time(), args)
    args.sourcedir = os.getcwd()
    mainworkdir = get_pilot_work_dir(args.workdir) if args.workdir else os.getcwd()
    if args.workdir:
        mkdirs(mainworkdir)
    args.mainworkdir = mainworkdir
    os.chdir(mainworkdir)
    establish_logging(debug=args.debug, nopilotlog=args.nopilotlog)
    env = os.environ
    env["PILOT_WORK_DIR"] = args.workdir
    env["PILOT_HOME"] = mainworkdir
    env.setdefault("PILOT_SOURCE_DIR", args.sourcedir)
    env["PILOT_USER"] = args.pilot_user
    env["PILOT_JOB_STATE"] = "startup"
    env["PILOT_VERSION"] = get_pilot_version()
    env["PILOT_WRAP_UP"] = "NORMAL"
    env["PILOT_PROXY_VERIFICATION"] = str(args.verify_proxy)
    env["PILOT_PAYLOAD_PROXY_VERIFICATION"] = str(args.verify_payload_proxy)
    env["SERVER_UPDATE"] = SERVER_UPDATE_NOT_DONE
    env["PILOT_RESOURCE_NAME"] = args.hpc_resource
    env["PILOT_USE_RUCIO_TRACES"] = str(args.use_rucio_traces)
    env["PILOT_ES_EXECUTOR_TYPE"] = args.executor_type
    if args.output_dir:
        env["PILOT_OUTPUT_DIR"] = args.output_dir
    env["PANDA_SERVER_URL"] = get_panda_server(args.url, args.port, update_server=args.update_server)
    env["QUEUEDATA_SERVER_URL"] = args.queuedata_url
    if args.storagedata_url:
        env["STORAGEDATA_SERVER_URL"] = args.storagedata_url
    trace = main(args)
    add_to_pilot_timing("0", PILOT_END_TIME, time.time(), args, store=False)
    code = exit_code(trace)
    logging.shutdown()
    return code


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
