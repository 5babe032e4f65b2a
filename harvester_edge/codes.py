"""Every numeric code harvester-edge sends or acts on, by name, with its meaning (as the PanDA pilot's
pilot/common/errorcodes.py keeps its own): logic uses the names, never a bare 30 or 60000.

The values are wire values: PanDA's own where PanDA defines the code (the PanDA meaning is given), ours otherwise.
They are plain ints (not enums), so what goes into JSON, URL-encoded answers and SQLite is exactly the number.
Sources: panda-server's pandaserver/dataservice/Protocol.py (status codes) and pilot3's pilot/common/errorcodes.py.

jumbo (the pilot) imports nothing of the daemon: the one pilot code it sets, PilotError.TRFDOWNLOADFAILURE, is
repeated in jumbo/transform.py and a test checks the two agree.
"""

from __future__ import annotations

from typing import ClassVar


class StatusCode:
    """PanDA's StatusCode: the outcome of a request, in every legacy (/server/panda) answer and per job in bulk
    job updates (the SC_* constants of pandaserver/dataservice/Protocol.py)."""

    SUCCESS = 0  # SC_Success
    TIMEOUT = 10  # SC_TimeOut: the database layer failed or was slow; the caller retries the same request
    NO_JOBS = 20  # SC_NoJobs: getJob found no job to hand out
    FAILED = 30  # SC_Failed: refused (e.g. an illegal state change); nothing was written
    NON_SECURE = 40  # SC_NonSecure: not a secure connection (not sent by this service)
    INVALID = 50  # SC_Invalid (PanDA: invalid token): here a malformed or unknown parameter or id
    ROLE = 60  # SC_Role: invalid role (not sent by this service)
    PERMISSION = 70  # SC_Perms: permission denied (a failed token, a job of another caller)
    MISSING_KEY = 80  # SC_MissKey: no object store key (this service keeps none)
    PROXY_ERROR = 90  # SC_ProxyError: no proxy (this service keeps no proxy cache)

    MEANING: ClassVar[dict[int, str]] = {
        SUCCESS: "success",
        TIMEOUT: "timeout: the server's database was unavailable or slow, retry",
        NO_JOBS: "no jobs",
        FAILED: "failed",
        NON_SECURE: "not a secure connection",
        INVALID: "invalid parameter or token",
        ROLE: "invalid role",
        PERMISSION: "permission denied",
        MISSING_KEY: "key missing",
        PROXY_ERROR: "proxy error",
    }


class PilotError:
    """pilotErrorCode values (the names of pilot3's pilot/common/errorcodes.py) this code base acts on."""

    STAGEINFAILED = 1099  # failed to stage-in file
    STAGEOUTFAILED = 1137  # failed to stage-out file (a put error)
    TRFDOWNLOADFAILURE = 1149  # the transformation could not be downloaded (jumbo/transform.py sets it)
    LOOPINGJOB = 1150  # no output and no CPU progress for the looping timeout: killed (jumbo.execute.CODE_LOOPING)
    STAGEINTIMEOUT = 1151  # file transfer timed out during stage-in (GETTIMEOUT in Pilot 1)

    MEANING: ClassVar[dict[int, str]] = {
        STAGEINFAILED: "Failed to stage-in file",
        STAGEOUTFAILED: "Failed to stage-out file",
        TRFDOWNLOADFAILURE: "Transform could not be downloaded",
        LOOPINGJOB: "Looping job killed by pilot",
        STAGEINTIMEOUT: "File transfer timed out during stage-in",
    }


class DispatcherError:
    """jobDispatcherErrorCode values: a job the PanDA server (here: the central service's watchdog) failed itself."""

    LOST_HEARTBEAT = 100  # a running/starting job sent no heartbeat for too long
    RECOVERY_FAILED = 101  # the job could not be recovered
    NO_REPLY = 102  # no reply to a sent job

    MEANING: ClassVar[dict[int, str]] = {
        LOST_HEARTBEAT: "lost heartbeat",
        RECOVERY_FAILED: "recovery failed",
        NO_REPLY: "no reply to sent job",
    }


class EventError:
    """errorCode of a failed event range in update_event_ranges (ours: PanDA leaves event codes to the payload)."""

    PAYLOAD_FAILED = 1  # a pilot reported the range failed without a code of its own
    NOT_PROCESSED = 60000  # the pilot never ran the range (walltime, drain, worker gone): not the range's fault

    MEANING: ClassVar[dict[int, str]] = {
        PAYLOAD_FAILED: "payload failed (no code given by the pilot)",
        NOT_PROCESSED: "not processed: the pilot stopped before running it (walltime, drain or worker ended)",
    }
