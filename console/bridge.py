"""The one module that talks to the engine for the screen: a reader thread
that takes a snapshot and then follows the engine's event stream, putting
everything on a queue the screen drains on its own timer (so bursts of
telemetry and metric points reach the widgets merged, a few times a second),
reconnecting quickly at first (every 0.1 s for 5 s), then with backoff (cut
short when the engine's socket appears again), when the engine goes away; and the actions
(cancel, retry, submit, drain, check), each on its own short-lived client so
threads never share one. No screen library here."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine import hostkeys
from engine.client import EngineClient, LineStream
from engine.errors import NotFound, UserError
from engine.profiles import load_cluster_profile
from engine.transport.ssh import query_argv, ssh_config_path, ssh_env

RECENT_ENDED = 500           # ended jobs loaded with a snapshot
#: What the screen follows. Log lines are not among them: a job's detail
#: follows its own log (`follow_logs`), so the screen does not receive every
#: line of every job.
EVENT_TYPES = ("job", "node", "nodes-checked", "telemetry", "metric")
BACKOFF_START, BACKOFF_MAX = 0.5, 10.0
#: After a lost connection the reader first retries every QUICK_RETRY_S for
#: QUICK_FOR_S (an engine restart is back within a second on the screen),
#: then backs off from BACKOFF_START to BACKOFF_MAX.
QUICK_RETRY_S, QUICK_FOR_S = 0.1, 5.0
#: `nodes check` waits on every node's probe, and the peers' ssh checks run
#: one after another on the engine's side (up to a minute): the check's
#: client waits that long and more, where every other call gives up at 30 s.
CHECK_TIMEOUT_S = 120.0


def _socket_id(path: object) -> tuple[int, int] | None:
    """The socket file's (inode, mtime in ns), None when it is not there."""
    if not isinstance(path, str | os.PathLike):
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


@dataclass(frozen=True)
class Snapshot:
    nodes: list[dict[str, Any]]
    jobs: list[dict[str, Any]]


@dataclass(frozen=True)
class Down:
    """The engine cannot be reached; the reader retries in `retry_in` s."""

    reason: str
    retry_in: float


Item = Snapshot | Down | dict[str, Any]


class EngineBridge:
    def __init__(self, client_factory: Callable[[], EngineClient] = EngineClient) -> None:
        self._factory = client_factory
        self._queue: queue.Queue[Item] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ stream
    def start(self) -> None:
        self._thread = threading.Thread(target=self._read, name="engine-events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def drain(self, limit: int = 10_000) -> list[Item]:
        """Everything received since the last call (at most `limit` items)."""
        out: list[Item] = []
        while len(out) < limit:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return out

    def _read(self) -> None:
        backoff = BACKOFF_START
        lost_at: float | None = None  # when the connection was lost (None: connected)
        told = False  # a Down is queued for this outage's quick retries
        client: EngineClient | None = None
        while not self._stop.is_set():
            try:
                client = self._factory()
                stream = client.events(EVENT_TYPES)
                next(stream)  # the hello: subscribed, so no event is missed after the snapshot
                self._queue.put(self._snapshot(client))
                backoff, lost_at, told = BACKOFF_START, None, False
                for event in stream:
                    if self._stop.is_set():
                        return
                    if event.get("type") != "keepalive":
                        self._queue.put(event)
                reason = "the engine closed the event stream"
            except Exception as exc:  # noqa: BLE001 - the reader must outlive any failure
                reason = str(exc) or type(exc).__name__
            now = time.monotonic()
            lost_at = now if lost_at is None else lost_at
            if now - lost_at < QUICK_FOR_S:
                if not told:  # once per outage: the banner, not ten a second
                    self._queue.put(Down(reason, QUICK_RETRY_S))
                    told = True
                self._stop.wait(QUICK_RETRY_S)
                continue
            self._queue.put(Down(reason, backoff))
            self._wait(client, backoff)
            backoff = min(BACKOFF_MAX, backoff * 2)

    def _wait(self, client: EngineClient | None, seconds: float) -> None:
        """Wait `seconds`, or less: until the engine's socket appears again
        (an engine back after the quick retries is reconnected at once)."""
        path = getattr(client, "socket_path", None)
        before = _socket_id(path)
        deadline = time.monotonic() + seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            self._stop.wait(min(QUICK_RETRY_S, max(0.0, deadline - time.monotonic())))
            now = _socket_id(path)
            if now is not None and now != before:
                return

    @staticmethod
    def _snapshot(client: EngineClient) -> Snapshot:
        active = client.jobs(states=("held", "queued", "starting", "running"))
        recent = client.jobs(limit=RECENT_ENDED)
        jobs = {j["id"]: j for j in [*recent, *active]}
        return Snapshot(client.nodes(), list(jobs.values()))

    # ------------------------------------------------------------ actions
    def _call(self, fn: Callable[[EngineClient], Any]) -> Any:
        with self._factory() as client:
            return fn(client)

    def cancel(self, job_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._call(lambda c: c.cancel(job_id))
        return result

    def retry(self, job_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._call(lambda c: c.retry(job_id))
        return result

    def set_priority(self, job_id: int, priority: int) -> dict[str, Any]:
        result: dict[str, Any] = self._call(lambda c: c.set_priority(job_id, priority))
        return result

    def job(self, job_id: int) -> dict[str, Any]:
        """The job with its spec, attempts and event history."""
        result: dict[str, Any] = self._call(lambda c: c.job(job_id))
        return result

    def processes(self, job_id: int) -> list[dict[str, Any]]:
        """Every process of the job's current attempt on every node."""
        result: list[dict[str, Any]] = self._call(lambda c: c.processes(job_id))
        return result

    def submit_many(self, items: Sequence[tuple[dict[str, Any], Sequence[Any]]]
                    ) -> list[dict[str, Any]]:
        """Jobs in one all-or-none batch (a single job is a batch of one)."""
        result: list[dict[str, Any]] = self._call(lambda c: c.submit_many(items))
        return result

    def metrics(self, job_id: int) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call(lambda c: c.metrics(job_id))
        return result

    def nodes(self) -> list[dict[str, Any]]:
        """Every node's view: state and why, round trip, GPUs, last check."""
        result: list[dict[str, Any]] = self._call(lambda c: c.nodes())
        return result

    def drain_node(self, node: str, reason: str) -> dict[str, Any]:
        """No new work on the node (admins only): its view, drained."""
        result: dict[str, Any] = self._call(lambda c: c.drain(node, reason))
        return result

    def undrain_node(self, node: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call(lambda c: c.undrain(node))
        return result

    def check_nodes(self, node: str | None = None) -> list[dict[str, Any]]:
        """`nodes check` on every node (or one): each check ok or not, in words."""
        with self._factory() as client:
            client.timeout = max(client.timeout, CHECK_TIMEOUT_S)
            result: list[dict[str, Any]] = client.check_nodes(node)
        return result

    def trust_node(self, name: str, replace: bool, confirm: Callable[[str], bool]
                   ) -> hostkeys.Trusted:
        """What `llmconsole nodes trust NODE [--replace]` does, on this side of
        the socket (the user's ssh, the user's known_hosts or the cluster
        profile's): the node from the cluster profile ($LLMCONSOLE_CLUSTER),
        its key scanned, `confirm(question)` asked with its fingerprint, the
        key written. UserError (one line) when it cannot or must not."""
        cluster = load_cluster_profile(os.environ.get("LLMCONSOLE_CLUSTER"))
        try:
            node = cluster.node(name)
        except KeyError:
            names = ", ".join(n.name for n in cluster.nodes)
            raise UserError(f"no node {name!r} in cluster profile {cluster.name!r} (its nodes: "
                            f"{names}); set LLMCONSOLE_CLUSTER to the engine's cluster "
                            f"profile, or run `llmconsole nodes trust {name} --cluster FILE`"
                            ) from None
        if node.is_local:
            raise UserError(f"{name} is the head node, reached without ssh: it has no host "
                            "key to trust")
        argv = query_argv(node, known_hosts=cluster.known_hosts, ssh_config=ssh_config_path())
        return hostkeys.trust(node.name, argv, known_hosts=cluster.known_hosts,
                              replace=replace, confirm=confirm, env=ssh_env())

    def follow_logs(self, job_id: int, attempt: int | None = None, tail: int = 5000
                    ) -> LineStream:
        """The last `tail` lines of an attempt, then new ones until it ends or
        the stream is closed (from any thread). A client's streams have their
        own connections, so the client itself is not kept."""
        return self._factory().logs(job_id, attempt, follow=True, tail=tail)


    def log_bytes(self, job_id: int, attempt: int | None = None) -> bytes:
        """The attempt's output so far, as the engine's copy holds it (not
        followed): what `ctrl+s` saves, byte for byte."""
        return b"".join(self._factory().logs(job_id, attempt).raw())


class FixedBridge:
    """The bridge's surface over fixed items, served once, never connecting:
    for pictures (snapshot tests) and benchmarks of the screen."""

    def __init__(self, items: Sequence[Item], logs: Sequence[str] = (),
                 details: Mapping[int, dict[str, Any]] | None = None,
                 metrics: Mapping[int, list[dict[str, Any]]] | None = None) -> None:
        self.items: list[Item] = list(items)
        self.served: list[Item] = []
        self.log_lines = list(logs)
        self.details = dict(details or {})
        self.points = dict(metrics or {})
        self.live_logs: queue.Queue[str | None] = queue.Queue()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def drain(self, limit: int = 10_000) -> list[Item]:
        items, self.items = self.items[:limit], self.items[limit:]
        self.served.extend(items)
        return items

    def metrics(self, job_id: int) -> list[dict[str, Any]]:
        return self.points.get(job_id, [])

    def nodes(self) -> list[dict[str, Any]]:
        """The nodes of the newest snapshot served."""
        return next((list(i.nodes) for i in reversed(self.served) if isinstance(i, Snapshot)),
                    [])

    def job(self, job_id: int) -> dict[str, Any]:
        if job_id not in self.details:
            raise NotFound(f"no job {job_id}")
        return self.details[job_id]

    def follow_logs(self, job_id: int, attempt: int | None = None, tail: int = 5000
                    ) -> FixedStream:
        return FixedStream(self.log_lines[-tail:], self.live_logs)

    def log_bytes(self, job_id: int, attempt: int | None = None) -> bytes:
        return "".join(f"{line}\n" for line in self.log_lines).encode()


class FixedStream:
    """Fixed lines, then whatever is put on `live` until None or close()."""

    def __init__(self, lines: Sequence[str], live: queue.Queue[str | None]) -> None:
        self.lines, self.live = list(lines), live
        self.closed = False

    def __iter__(self) -> Iterator[str]:
        yield from self.lines
        while not self.closed:
            line = self.live.get()
            if line is None:
                return
            yield line

    def close(self) -> None:
        self.closed = True
        self.live.put(None)
