"""Issue 11, part 6 (service resources), against real processes on loopback:

- Prometheus series are bounded by the routes: random paths (legacy methods, /api/v1, anything) share one label;
- a header-read deadline and a connection cap: 1,000 half-open connections do not keep a new client out and are
  closed after central.header_timeout; under a 256-descriptor limit, 300 of them do not make the service
  unreachable (the issue's reproduction);
- a fresh daemon's databases, secrets and log are 0600, its work dir, access points and logs 0700; looser ones
  made by an older version are tightened at the next start.
"""

from __future__ import annotations

import os
import re
import resource
import secrets
import select
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests
import yaml

from helpers import FAST_AGENTS, local_queue

CLI = [sys.executable, "-m", "harvester_edge"]
HALF_OPEN = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # request headers that never end
LOCAL_QUEUE = local_queue(max_running_workers=1)


def write_site(root: Path, central: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    config = {
        "site": "t",
        "central": {"mode": "embedded", "host": "127.0.0.1", "port": 0, **central},
        "queues": [LOCAL_QUEUE],
        "paths": {"work_dir": str(root / "work")},
        "agents": dict(FAST_AGENTS),
        "daemon": {"stop_timeout": "10s", "lease_time": "30s"},
    }
    path = root / "site.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def env_for(root: Path) -> dict:
    env = {**os.environ, "HARVESTER_EDGE_WORK_DIR": str(root / "work"), "HE_LOCAL_BATCH_DIR": str(root / "batch")}
    env.pop("HARVESTER_EDGE_CONFIG", None)
    return env


class Served:
    """`harvester-edge central serve` in its own process (optionally under `ulimit -n`), stopped by pid."""

    def __init__(self, root: Path, central: dict, ulimit: str | None = None) -> None:
        self.config = write_site(root, central)
        argv = [*CLI, "--config", str(self.config), "central", "serve"]
        if ulimit is not None:  # e.g. "-n 256": the shell sets the limit, then becomes the service (no preexec_fn)
            argv = ["bash", "-c", f'ulimit {ulimit} && exec "$@"', "bash", *argv]
        self.out = root / "serve.out"
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(argv, env=env_for(root), stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not (match := re.search(r"listening on (http://\S+)", self.output())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"the service did not start:\n{self.output()}")
            time.sleep(0.05)
        self.url = match.group(1)
        self.host, self.port = "127.0.0.1", int(self.url.rsplit(":", 1)[1])

    def output(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def get(self, path: str, timeout: float = 10) -> requests.Response:
        return requests.get(self.url + path, timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def serve(tmp_path, central_db):
    started: list[Served] = []
    db = {"db": central_db} if isinstance(central_db, str) else {}  # PostgreSQL; else the SQLite file in work_dir

    def start(ulimit: str | None = None, **central) -> Served:
        served = Served(tmp_path / f"site{len(started)}", {"trusted": True, **db, **central}, ulimit)
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()


@pytest.fixture(autouse=True)
def enough_descriptors():
    """This test process holds the half-open sockets: its own soft limit must allow them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- metrics: labels from route templates ----------------------------------------------------------------------
def http_series(text: str) -> set[tuple[str, str, str]]:
    """(method, route, code) of each series of the HTTP request histogram."""
    series = set()
    for m in re.finditer(r"^harvester_edge_http_request_seconds_count\{(.*)\}", text, re.M):
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1)))
        series.add((labels["method"], labels["route"], labels["code"]))
    return series


def test_random_paths_share_one_label(serve):
    served = serve()
    session = requests.Session()
    for _ in range(2):  # the first scrape creates the /metrics series itself
        before = session.get(served.url + "/metrics", timeout=10).text
    n = 1000
    for _ in range(n):
        session.post(f"{served.url}/server/panda/m{secrets.token_hex(4)}", data={"a": "1"}, timeout=10)
        session.get(f"{served.url}/api/v1/x/y{secrets.token_hex(4)}", timeout=10)
    after = session.get(served.url + "/metrics", timeout=10).text
    new = http_series(after) - http_series(before)
    lines_added = len(after.splitlines()) - len(before.splitlines())
    print(
        f"\n{2 * n} random paths: {len(new)} new series {sorted(new)}, {lines_added} new /metrics lines "
        f"({len(before.splitlines())} -> {len(after.splitlines())})"
    )
    assert new == {("POST", "/server/panda/<unknown>", "403"), ("GET", "<unmatched>", "404")}
    assert lines_added <= 2 * 20  # two histograms: their buckets, _count, _sum, _created
    assert "/server/panda/m" not in after and "/api/v1/x/y" not in after


def test_labels_are_templates_for_known_routes_and_the_hot_path(serve):
    served = serve()
    assert served.get("/monitor/job/123456").status_code == 404
    assert served.get("/server/panda/isAlive").status_code == 200
    hot = requests.post(
        served.url + "/api/v1/pilot/update_job", json={"job_id": 1, "job_status": "running"}, timeout=10
    )
    assert hot.status_code == 200
    series = http_series(served.get("/metrics").text)
    assert ("GET", "/monitor/job/{panda_id}", "404") in series
    assert ("GET", "/server/panda/isAlive", "200") in series
    assert ("POST", "/api/v1/pilot/update_job", "200") in series  # FastPath's answer, timed
    assert not any("123456" in route for _, route, _ in series)


# -- header-read deadline and connection cap -------------------------------------------------------------------
def open_half(host: str, port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection((host, port), timeout=10)
        s.sendall(HALF_OPEN)
        socks.append(s)
    return socks


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(4096) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except BlockingIOError:
        return False


def wait_all_closed(socks: list[socket.socket], timeout: float) -> float:
    """Seconds until the service closed every socket (EOF or reset); fails after `timeout`."""
    start, open_ = time.monotonic(), {s.fileno(): s for s in socks}
    for s in socks:
        s.setblocking(False)
    poller = select.poll()
    for fd in open_:
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    while open_:
        left = timeout - (time.monotonic() - start)
        assert left > 0, f"{len(open_)} of {len(socks)} half-open connections still open after {timeout}s"
        for fd, _ in poller.poll(left * 1000):
            if fd in open_ and closed_by_peer(open_[fd]):
                poller.unregister(fd)
                del open_[fd]
    return time.monotonic() - start


def timed_request(served: Served) -> float:
    """A new client on a new connection: seconds until it has its answer (which must be 200)."""
    start = time.monotonic()
    response = requests.get(served.url + "/api/v1/system/is_alive", timeout=10)
    elapsed = time.monotonic() - start
    assert response.status_code == 200, response.text
    return elapsed


def test_half_open_connections_neither_block_new_clients_nor_stay(serve):
    timeout = 3.0
    served = serve(header_timeout=f"{timeout}s")
    socks = open_half(served.host, served.port, 1000)
    try:
        opened = time.monotonic()
        latency = timed_request(served)
        assert latency < 1.0, f"a new client waited {latency:.3f}s behind 1,000 half-open connections"
        # none is closed early: the deadline, not something else, closes them
        poller = select.poll()  # not select(): with 1,000 sockets the descriptors may pass FD_SETSIZE (1024)
        for s in socks[-100:]:
            poller.register(s, select.POLLIN)
        by_fd = {s.fileno(): s for s in socks[-100:]}
        ready = [by_fd[fd] for fd, _ in poller.poll(0)]
        assert not ready or not any(closed_by_peer(s) for s in ready)
        wait_all_closed(socks, timeout + 10)
        closed_after = time.monotonic() - opened
        print(
            f"\nnew client with 1,000 half-open connections: {latency * 1000:.1f} ms; all 1,000 closed "
            f"{closed_after:.2f}s after the last one opened (header_timeout {timeout}s)"
        )
        assert closed_after < timeout + 5
        assert timed_request(served) < 1.0
    finally:
        for s in socks:
            s.close()


def test_a_keep_alive_connection_that_stalls_in_its_next_request_is_closed(serve):
    served = serve(header_timeout="2s")
    with socket.create_connection((served.host, served.port), timeout=10) as s:
        s.sendall(b"GET /api/v1/system/is_alive HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200"), answer
        started = time.monotonic()
        s.sendall(b"GET /api/v1/system/is_alive HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # the next request, never finished
        assert wait_all_closed([s], 10) < 2 + 3
        assert time.monotonic() - started >= 1.5


@pytest.mark.parametrize("path", ["/api/v1/pilot/update_job", "/api/v1/harvester/heartbeat", "/server/panda/updateJob"])
def test_a_request_whose_body_stalls_gets_408_and_is_closed(serve, path):
    """Headers complete, then 10 of 100 announced bytes: the hot path and the gate both stop waiting."""
    served = serve(body_timeout="2s")
    with socket.create_connection((served.host, served.port), timeout=10) as s:
        started = time.monotonic()
        s.sendall(
            b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"job_id":'
        )
        answer = s.recv(65536)
        took = time.monotonic() - started
        assert answer.split(b"\r\n", 1)[0] == b"HTTP/1.1 408 Request Timeout", answer
        assert 1.5 <= took < 6, took
        assert wait_all_closed([s], 10) < 10


def test_under_a_256_descriptor_limit_300_half_open_do_not_lock_clients_out(serve):
    served = serve(ulimit="-n 256", header_timeout="60s")
    pid = served.proc.pid
    assert psutil.Process(pid).rlimit(psutil.RLIMIT_NOFILE) == (256, 256)
    assert "does not fit under the open-file limit 256" in served.output()  # max_connections lowered, logged
    socks = open_half(served.host, served.port, 300)
    try:
        latency = timed_request(served)
        assert latency < 1.0
        fds = psutil.Process(pid).num_fds()
        assert fds < 256, f"the service holds {fds} descriptors under a limit of 256"
        held = sum(1 for c in psutil.Process(pid).net_connections("tcp") if c.status == psutil.CONN_ESTABLISHED)
        assert 256 - 64 - 10 <= held <= 256 - 64, f"{held} connections held: the cap (192) closes only the excess"
        # the oldest half-open connections made room (the cap closes the longest waiting first); the newest stay
        wait_all_closed(socks[:100], 5)
        newest = socks[-50:]
        for s in newest:
            s.setblocking(False)
        assert not any(closed_by_peer(s) for s in newest), "the newest half-open connections were closed"
        print(
            f"\n256-fd limit, 300 half-open: new client in {latency * 1000:.1f} ms, service holds {fds} fds, "
            f"{held} connections"
        )
    finally:
        for s in socks:
            s.close()


def test_idle_keep_alive_connections_make_room_for_new_clients(serve):
    served = serve(max_connections=16, header_timeout="30s")
    idle = []
    try:
        for _ in range(16):  # each answers one request and stays open (keep-alive, 60 s)
            s = socket.create_connection((served.host, served.port), timeout=10)
            s.sendall(b"GET /api/v1/system/is_alive HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
            idle.append(s)
        assert timed_request(served) < 1.0  # not a 503: the longest idle connection made room
        wait_all_closed(idle[:1], 5)
    finally:
        for s in idle:
            s.close()


def test_the_service_raises_its_soft_open_file_limit_to_the_hard_one(serve):
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    hard = 1024 if hard == resource.RLIM_INFINITY else min(hard, 1024)
    served = serve(ulimit=f"-S -n {hard // 2} && ulimit -H -n {hard}")
    assert psutil.Process(served.proc.pid).rlimit(psutil.RLIMIT_NOFILE) == (hard, hard)


# -- file modes --------------------------------------------------------------------------------------------------
def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def run_daemon_until(root: Path, config: Path, until, timeout: float = 60) -> None:
    """`harvester-edge run` until `until()` holds, then SIGTERM and wait."""
    with open(root / "run.out", "ab") as out:
        proc = subprocess.Popen(
            [*CLI, "--config", str(config), "run"], env=env_for(root), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + timeout
        while not until():
            assert proc.poll() is None, (root / "run.out").read_text()
            assert time.monotonic() < deadline, f"timed out:\n{(root / 'run.out').read_text()[-3000:]}"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def submit_task(root: Path, config: Path) -> None:
    task = {
        "name": "modes",
        "payload": {"kind": "python", "callable": "jumbo.payloads:sleep", "args": {"seconds_per_event": 0.01}},
        "events": 20,
        "events_per_range": 10,
        "seconds_per_event": 0.01,
        "memory_per_rank_mb": 100,
        "max_attempts": 3,
        "jobs": 1,
    }
    path = root / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    subprocess.run(
        [*CLI, "--config", str(config), "task", "submit", str(path)],
        env=env_for(root),
        check=True,
        capture_output=True,
        timeout=60,
    )


def test_a_fresh_daemon_makes_everything_private(tmp_path):  # SQLite only: the modes of its files (-wal, -shm)
    root = tmp_path / "site"
    config = write_site(root, {"trusted": False})  # token mode: the signing secret exists too
    work = root / "work"
    live: dict[Path, int] = {}  # the SQLite companions exist only while the databases are open: stat them then

    def running() -> bool:
        for side in (*work.glob("*.db-wal"), *work.glob("*.db-shm")):
            try:
                live[side] = mode(side)
            except FileNotFoundError:
                pass
        return any((work / "workers").glob("*/worker.sh")) and {p.name for p in live} >= {
            "harvester.db-wal",
            "harvester.db-shm",
            "central.db-wal",
            "central.db-shm",
        }

    old_umask = os.umask(0o022)  # the usual umask: group and others would read everything by default
    try:
        submit_task(root, config)
        run_daemon_until(root, config, running)
    finally:
        os.umask(old_umask)
    files = [
        work / "harvester.db",
        work / "central.db",
        work / "central.secret",
        work / "daemon.lock",
        work / "logs" / "harvester-edge.log",
        *(work / "workers").glob("*/token"),
    ]
    dirs = [work, work / "workers", work / "logs", *[p for p in (work / "workers").iterdir() if p.is_dir()]]
    modes = {**{p: mode(p) for p in files + dirs}, **live}
    print("\n" + "\n".join(f"{oct(m)} {p.relative_to(tmp_path)}" for p, m in sorted(modes.items())))
    assert len(dirs) >= 4, "no access point was made"
    assert {p: oct(m) for p, m in modes.items() if m != (0o700 if p in dirs else 0o600)} == {}


def test_an_older_versions_loose_modes_are_tightened_at_start(tmp_path):  # SQLite only: its file modes
    root = tmp_path / "site"
    config = write_site(root, {"trusted": False})
    work = root / "work"
    submit_task(root, config)  # creates central.db
    run_daemon_until(root, config, lambda: (work / "harvester.db").exists())
    ap = work / "workers" / "old-access-point"
    ap.mkdir(parents=True, exist_ok=True)
    loose = {
        work: 0o755,
        work / "workers": 0o755,
        work / "logs": 0o755,
        ap: 0o755,
        work / "harvester.db": 0o644,
        work / "central.db": 0o644,
        work / "central.secret": 0o644,
        work / "daemon.lock": 0o644,
        work / "logs" / "harvester-edge.log": 0o644,
    }
    for path, m in loose.items():
        os.chmod(path, m)
    log_size = (work / "logs" / "harvester-edge.log").stat().st_size
    run_daemon_until(
        root, config, lambda: "started for site" in (work / "logs" / "harvester-edge.log").read_text()[log_size:]
    )
    for path in loose:
        assert mode(path) == (0o700 if path.is_dir() else 0o600), f"{path} is {oct(mode(path))}"
    log = (work / "logs" / "harvester-edge.log").read_text()[log_size:]
    assert re.search(r"tightened folder \S+/work from mode 755 to 700", log), log[-3000:]
    assert re.search(r"tightened file \S+/central.secret from mode 644 to 600", log), log[-3000:]
    assert "tightened 1 access points" in log


def test_beyond_max_connections_of_busy_requests_a_new_client_gets_503(serve):
    served = serve(max_connections=16, header_timeout="30s")
    busy = []
    try:
        for _ in range(16):  # complete headers, a body that never comes: each holds a request in flight
            s = socket.create_connection((served.host, served.port), timeout=10)
            s.sendall(
                b"POST /api/v1/harvester/update_workers HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
            )
            busy.append(s)
        deadline = time.monotonic() + 10
        while True:  # the service has all 16 (accepted asynchronously)
            held = sum(
                1 for c in psutil.Process(served.proc.pid).net_connections("tcp") if c.status == psutil.CONN_ESTABLISHED
            )
            if held >= 16 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        refused = requests.get(served.url + "/api/v1/system/is_alive", timeout=10)
        assert refused.status_code == 503
        assert "max_connections 16" in served.output()  # the summary line
    finally:
        for s in busy:
            s.close()
    deadline = time.monotonic() + 10
    while (status := requests.get(served.url + "/api/v1/system/is_alive", timeout=10).status_code) == 503:
        assert time.monotonic() < deadline, "still 503 after the busy connections closed"
        time.sleep(0.1)
    assert status == 200


# -- settings ----------------------------------------------------------------------------------------------------
def test_the_strict_config_loader_takes_the_new_settings(tmp_path):
    from harvester_edge.config import load_config
    from harvester_edge.errors import ConfigError

    example = load_config(Path(__file__).parents[2] / "configs" / "slurm-example.yaml")
    assert (example.central.header_timeout, example.central.max_connections) == (10, 4096)
    ok = load_config(write_site(tmp_path / "a", {"header_timeout": "2s", "max_connections": 100}))
    assert (ok.central.header_timeout, ok.central.max_connections) == (2, 100)
    for bad, key in (
        ({"header_timeout": "0s"}, "header_timeout"),
        ({"max_connections": 1}, "max_connections"),
        ({"header_timout": "5s"}, "header_timeout"),
    ):  # the last: a typo gets "did you mean"
        with pytest.raises(ConfigError, match=key):
            load_config(write_site(tmp_path / key, bad))


def test_private_folders_and_files_unit(tmp_path, caplog):
    from harvester_edge.filemodes import private_database, private_dir, private_file

    old_umask = os.umask(0o000)  # the loosest umask: modes must not depend on it
    try:
        made = private_dir(tmp_path / "a" / "b" / "c")
        db = private_database(made / "x.db")
    finally:
        os.umask(old_umask)
    assert [mode(p) for p in (tmp_path / "a", tmp_path / "a" / "b", made)] == [0o700] * 3
    assert mode(db) == 0o600 and db.stat().st_size == 0  # SQLite takes an empty file as an empty database
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    private_dir(loose, tighten=False)
    assert mode(loose) == 0o755  # only made to exist
    private_dir(loose)
    assert mode(loose) == 0o700 and "tightened folder" in caplog.text
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    private_dir(sticky)
    assert mode(sticky) == 0o1777 and "is shared" in caplog.text  # never a shared folder such as /tmp
    secret = tmp_path / "secret"
    secret.write_text("s")
    os.chmod(secret, 0o644)
    private_file(secret)
    assert mode(secret) == 0o600
    assert not private_file(tmp_path / "missing").exists()  # without create, a missing file stays missing
