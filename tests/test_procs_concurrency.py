"""Process lookups run in several checks at once (the engine's thread pool): one check's lookup
must never break another's. psutil shares its Process objects between process_iter() calls, so a
lookup that read ``proc.info`` could find another caller's attrs there (KeyError: 'create_time',
seen as FP-1.1 ERROR "check raised KeyError" on a loaded host running several bots)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from exporter.bot import procs


def test_concurrent_process_lookups_do_not_break_each_other(tmp_path: Path) -> None:
    (tmp_path / "uw_flow_daemon.py").write_text("import time\nwhile True:\n    time.sleep(1)\n")
    daemon = subprocess.Popen([sys.executable, "uw_flow_daemon.py"], cwd=tmp_path)
    errors: list[BaseException] = []
    found: list[int] = []

    def lookup() -> None:
        try:
            for _ in range(150):
                found.extend(m.pid for m in procs.find_script_processes(tmp_path, "uw_flow_daemon.py"))
        except BaseException as exc:  # noqa: BLE001 - any failure is the finding
            errors.append(exc)

    def others() -> None:
        try:
            for _ in range(150):
                procs.other_bots(tmp_path / "elsewhere", "uw_flow_daemon.py", "main.py")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    try:
        threads = [threading.Thread(target=fn) for fn in (lookup, others, lookup, others)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        daemon.kill()
        daemon.wait(timeout=10)
    assert not errors, errors[:3]
    assert set(found) == {daemon.pid}


def test_the_process_table_scan_reads_each_whole_command_line(tmp_path: Path) -> None:
    """Kernel threads have an empty command line, a long one takes several reads, and a process
    that ended between the listing and the read is left out."""
    long = b"python3\0main.py\0" + b"x" * 200_000 + b"\0"
    for pid, cmdline in (("1", b"/sbin/init\0"), ("2", b""), ("77", long)):
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "cmdline").write_bytes(cmdline)
    (tmp_path / "90").mkdir()  # gone: no cmdline any more
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "cmdline").write_bytes(b"not a pid\0")
    table = procs.cmdlines(tmp_path)
    assert table is not None
    assert sorted(table) == [(1, b"/sbin/init\0"), (2, b""), (77, long)]
    assert procs.cmdlines(tmp_path / "missing") is None
    # the real table holds this process, with its own command line
    real = dict(procs.cmdlines() or [])
    with open(f"/proc/{os.getpid()}/cmdline", "rb") as fh:
        assert real[os.getpid()] == fh.read()
