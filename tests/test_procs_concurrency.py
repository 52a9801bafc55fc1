"""Process lookups run in several checks at once (the engine's thread pool): one check's lookup
must never break another's. psutil shares its Process objects between process_iter() calls, so a
lookup that read ``proc.info`` could find another caller's attrs there (KeyError: 'create_time',
seen as FP-1.1 ERROR "check raised KeyError" on a loaded host running several bots)."""

from __future__ import annotations

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
