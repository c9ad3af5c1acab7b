"""Store contract: the write-ahead log stays bounded under one writer and a
long reader. Another process holds a read transaction open (as a CLI
streaming a log does) while the writer commits for seconds; the writer's
checkpoints never wait for it; once it lets go, a checkpoint brings the -wal
file back under the bound, and every write is there."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from engine.store import MetricPoint, Store
from engine.store.db import WAL_CHECKPOINT_BYTES, WAL_SIZE_LIMIT
from tests.contract.store_helpers import make_spec

READER = r"""
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN")
print(conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0], flush=True)
sys.stdin.readline()  # hold the snapshot until told
print(conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0], flush=True)
conn.execute("COMMIT")
conn.close()
"""


def _wal(path: Path) -> int:
    try:
        return os.stat(f"{path}-wal").st_size
    except FileNotFoundError:
        return 0


def test_wal_stays_bounded_under_a_writer_and_a_long_reader(tmp_path: Path) -> None:
    path = tmp_path / "engine.db"
    store = Store(path)
    job = store.submit(make_spec(), 0, actor="t", now=1.0)
    written = 0

    def write_for(seconds: float) -> list[tuple[int, float]]:
        """Batches of 200 points, a checkpoint after each as the engine's
        flush loop does; the checkpoints' (busy, seconds)."""
        nonlocal written
        checkpoints = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            store.record_metrics(MetricPoint(job.id, 1, written + i, "loss", 1.0, 2.0)
                                 for i in range(200))
            written += 200
            started = time.monotonic()
            busy, _, _ = store.checkpoint_wal()  # from WAL_CHECKPOINT_BYTES on
            checkpoints.append((busy, time.monotonic() - started))
        return checkpoints

    write_for(0.3)
    reader = subprocess.Popen([sys.executable, "-c", READER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout is not None and reader.stdin is not None
        seen = int(reader.stdout.readline())
        assert seen == written
        held = write_for(3.0)
        grown = _wal(path)
        reader.stdin.write("go\n")
        reader.stdin.flush()
        assert int(reader.stdout.readline()) == seen  # its snapshot held throughout
        assert reader.wait(10) == 0
    finally:
        if reader.poll() is None:
            reader.kill()
    # while the reader held its snapshot the log could only grow, and no
    # checkpoint waited for it (busy, at once, not the 10 s busy timeout)
    assert grown > WAL_SIZE_LIMIT, (grown, written)
    assert any(busy for busy, _ in held) and max(s for _, s in held) < 1.0, held
    write_for(0.2)
    assert store.checkpoint_wal() == (0, 0, 0) or _wal(path) < WAL_CHECKPOINT_BYTES
    assert store.checkpoint_wal(min_bytes=0) == (0, 0, 0)
    assert _wal(path) < WAL_SIZE_LIMIT, _wal(path)
    assert _wal(path) == 0
    store.close()
    with Store(path) as again:  # nothing lost
        assert len(again.metrics(job.id, attempt=1, names=["loss"])) == written
        assert again.integrity_check() == "ok"
