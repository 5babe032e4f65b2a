"""One daemon per site: `cron` starts it in the background; a second `cron` or `run` finds the lock, starts nothing."""

from __future__ import annotations

import re
import subprocess
import time

STOP_MARGIN = 15  # seconds on top of daemon.stop_timeout for interpreter exit on a busy 2-core machine


def test_cron_starts_one_daemon_and_a_second_start_finds_it(make_site):
    site = make_site()
    first = site.cron()
    assert first.returncode == 0
    assert "daemon started for site t" in first.stdout
    pid = site.wait_daemon()
    site.wait_log(r"daemon \S+ started for site t")
    assert site.daemon_processes() == [pid]  # the cron command itself has exited: only the daemon remains

    second = site.cron()
    assert second.returncode == 0
    lines = second.stdout.strip().splitlines()
    assert len(lines) == 1, second.stdout
    assert re.search(rf"already running \(pid {pid}\b.*\)", lines[0]), lines[0]
    assert second.stderr == ""

    foreground = site.cli("run", check=False)
    assert foreground.returncode != 0  # a foreground start that cannot run says so in its exit code
    assert f"already running (pid {pid}" in foreground.stderr

    assert site.lock_pid() == pid
    assert site.daemon_processes() == [pid]  # neither start left a process behind
    assert len(re.findall(r"daemon \S+ started for site", site.log_text())) == 1

    site.stop_pid(pid, timeout=10 + STOP_MARGIN)
    site.wait_log(r"harvester_edge.daemon: stopped")
    assert site.daemon_processes() == []

    # the lock died with its holder: the next cron start runs a daemon again
    assert "daemon started" in site.cron().stdout
    again = site.wait_daemon(not_pid=pid)
    site.wait_log(r"daemon \S+ started for site t", count=2)
    site.stop_pid(again, timeout=10 + STOP_MARGIN)


def test_a_killed_daemon_does_not_block_the_next_start(make_site):
    """The lock is an flock, not a pid file: a SIGKILLed holder leaves its pid in the file but no lock."""
    site = make_site()
    site.cron()
    pid = site.wait_daemon()
    site.wait_log(r"daemon \S+ started for site t")
    site.kill_pid(pid)
    assert site.lock_pid() == pid  # the stale pid is still in the file

    restarted = site.cron()
    assert "daemon started" in restarted.stdout and "already running" not in restarted.stdout
    new_pid = site.wait_daemon(not_pid=pid)
    site.wait_log(r"daemon \S+ started for site t", count=2)
    assert site.daemon_processes() == [new_pid]
    site.stop_pid(new_pid, timeout=10 + STOP_MARGIN)


def test_cron_starts_racing_each_other_leave_exactly_one_daemon(make_site):
    """cron may fire while a slow start is still under way: of 4 simultaneous starts, one daemon remains."""
    site = make_site()
    starts = [
        subprocess.Popen(site.argv("cron"), env=site.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=60) for p in starts]
    assert [p.returncode for p in starts] == [0, 0, 0, 0], outputs
    assert all(len(out.strip().splitlines()) == 1 and err == "" for out, err in outputs), outputs
    assert any("daemon started" in out for out, _ in outputs), outputs
    pid = site.wait_daemon()
    site.wait_log(r"daemon \S+ started for site t")
    time.sleep(2)  # a start that got past the probe but lost the lock has had time to give up
    assert site.daemon_processes() == [pid]
    assert site.lock_pid() == pid
    assert len(re.findall(r"daemon \S+ started for site", site.log_text())) == 1
    site.stop_pid(pid, timeout=10 + STOP_MARGIN)
