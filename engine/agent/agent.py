"""The node agent: one long-lived process per node, driven over stdin/stdout.

Contract (the engine's runtime codes against this):
- stdout carries only events, one JSON object per line, flushed per line
  (ASCII; NaN/Infinity from metric records pass through as Python's json
  writes them). Diagnostics go to stderr.
- First line: {"ev":"hello", ...} with the node's inventory and the run
  directories found under ROOT/runs (see runs.run_summary).
- Then {"ev":"telemetry"} every `interval` seconds while the agent lives.
- Commands arrive on stdin (see protocol.parse_command). A malformed or
  unknown one is answered with {"ev":"error"} and the agent keeps going.
- A start with "uid" runs the job as that user (uid, gid, groups and HOME
  from this node's passwd; cwd defaults to the run directory's work/): an
  agent running as root does it through supervise.py --uid, on every node
  alike; an agent that is not root refuses any uid but its own with an
  "error" event (op "start"). Run-directory ownership: see engine.agent.runs.
- Jobs never depend on the agent: each is started through supervise.py in a
  new session. EOF on stdin, {"op":"shutdown"}, SIGTERM or a broken stdout
  end the agent and leave every job running.
- {"op":"reap", "attempt", "run_dir"} ends what is left here of an attempt
  this node runs no part of (the ranks horovodrun started over SSH carry the
  launching node's LLMCONSOLE_ATTEMPT and LLMCONSOLE_RUN_DIR): SIGTERM to
  every process whose environment has both, SIGKILL after the grace to what
  is still there. It answers nothing; a supervisor of this attempt on this
  host (test hosts share one machine) is never touched.
- {"op":"dump", "attempt", "label"[, "run_dir"]} writes a py-spy stack dump
  of every process of the attempt on this node to <run dir>/stacks/<label>/
  and answers one {"ev":"dumped", "attempt", "files", "errors"} (see
  engine.agent.stacks); other commands and telemetry go on meanwhile.
- Every started or attached attempt is tailed (poll, 10 ms for runs younger
  than 2 s, 50 ms after) and ends with exactly one "exited" (after its
  output.log and metrics.jsonl were streamed to the end) or "lost".
- log/metric events carry "offset" (start of the line) and "end" (just past
  its newline): resume with attach {"offsets": {"output": end, ...}}.
- A log line is the line's bytes decoded as UTF-8 with errors="surrogateescape"
  (a byte that is not UTF-8, such as 0xff, becomes a lone surrogate, U+DCFF,
  which JSON writes as "\udcff"): `line.encode("utf-8", "surrogateescape")`
  gives back the exact bytes, without the newline (and a trailing CR).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from engine.agent import probe, procs, runs, stacks
from engine.agent.protocol import (
    MAX_COMMAND_BYTES,
    VERSION,
    Attach,
    Dump,
    Error,
    Event,
    Exited,
    Hello,
    Log,
    Lost,
    Metric,
    Pong,
    Probe,
    Procs,
    ProtocolError,
    Reap,
    Runs,
    RunSummary,
    Simple,
    Start,
    Started,
    Stop,
    Telemetry,
    parse_command,
)
from engine.agent.runs import LineTail
from engine.agent.telemetry import HostSampler, NvmlReader, load_pynvml
from engine.versions import software_versions

SUPERVISE = Path(__file__).resolve().with_name("supervise.py")
FAST_POLL_S = 0.01
POLL_S = 0.05
YOUNG_S = 2.0
LIVENESS_EVERY_S = 0.5
CHUNK = 256 * 1024  # per file per poll, so telemetry and commands interleave


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _int(value: object) -> int | None:
    """An integer field of a run file, or None (missing or not an integer)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _num(value: object) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def log(message: str) -> None:
    print(f"agent: {message}", file=sys.stderr, flush=True)


@dataclass
class Watch:
    """An attempt being tailed."""

    attempt: str
    dir: Path
    output: LineTail
    metrics: LineTail
    proc: subprocess.Popen[bytes] | None = None
    since: float = field(default_factory=time.monotonic)
    started_sent: bool = False
    pid_doc: dict[str, Any] | None = None
    exit_doc: dict[str, Any] | None = None
    next_liveness: float = 0.0
    orphaned: bool = False

    def close(self) -> None:
        self.output.close()
        self.metrics.close()


class Agent:
    def __init__(self, node: str, root: Path, interval: float = 1.0, grace: float = 10.0,
                 out: BinaryIO | None = None, nvml: Any | None = None) -> None:
        self.node = node
        self.root = root.resolve()
        self.interval = interval
        self.grace = grace
        self.host = runs.this_host()
        self._out = out if out is not None else sys.stdout.buffer
        self._nvml = NvmlReader(nvml)
        self._last_gpus: list[dict[str, Any]] = []  # the last sample: procs reads GPU memory
        self._host_sampler = HostSampler()
        self._watches: dict[str, Watch] = {}
        self._stops: set[asyncio.Task[None]] = set()
        self._unreaped: list[subprocess.Popen[bytes]] = []
        self._wake = asyncio.Event()
        self._done = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- output ----------------------------------------------------------

    def emit(self, event: Event, flush: bool = True) -> None:
        """Write one event line. flush=False batches lines (log/metric bursts);
        the batch is flushed by the next flush() or emit()."""
        if self._done.is_set():
            return
        data = json.dumps(event.to_wire(), separators=(",", ":")).encode("ascii") + b"\n"
        try:
            self._out.write(data)
            if flush:
                self._out.flush()
        except (BrokenPipeError, ValueError, OSError):  # the engine went away
            self._done.set()

    def flush(self) -> None:
        if self._done.is_set():
            return
        try:
            self._out.flush()
        except (BrokenPipeError, ValueError, OSError):
            self._done.set()

    def error(self, message: str, attempt: str | None = None, op: str | None = None) -> None:
        self.emit(Error(message, attempt, op))

    # ---- main ------------------------------------------------------------

    async def run(self) -> int:
        self._loop = asyncio.get_running_loop()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)  # private unless _open_way
        runs.runs_dir(self.root).mkdir(exist_ok=True, mode=0o700)
        gpus = await asyncio.to_thread(self._nvml.inventory)
        if not gpus and self._nvml.unavailable_reason:
            log(f"no GPU: {self._nvml.unavailable_reason}")
        self.emit(Hello(self.node, os.getpid(), VERSION, self.host, os.cpu_count(),
                        HostSampler.memory_total_gb(), tuple(gpus), self._runs(),
                        software_versions()))
        threading.Thread(target=self._read_stdin, name="stdin", daemon=True).start()
        tasks = [asyncio.create_task(self._telemetry_loop()),
                 asyncio.create_task(self._tail_loop())]
        await self._done.wait()
        for t in tasks + list(self._stops):
            t.cancel()
        await asyncio.gather(*tasks, *self._stops, return_exceptions=True)
        for w in self._watches.values():
            w.close()
        self._nvml.close()
        return 0

    def _read_stdin(self) -> None:
        """Thread: raw reads from fd 0 (no Python-level lock held at exit)."""
        loop = self._loop
        if loop is None:
            return
        buf = bytearray()
        skipping = False
        while True:
            try:
                chunk = os.read(0, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                if buf.strip() and not skipping:
                    loop.call_soon_threadsafe(self._on_line, bytes(buf))
                loop.call_soon_threadsafe(self._done.set)
                return
            scan_from = len(buf)  # only new bytes can hold the next newline
            buf += chunk
            while True:
                nl = buf.find(b"\n", scan_from)
                if nl < 0:
                    break
                line = bytes(buf[:nl])
                del buf[:nl + 1]
                scan_from = 0
                if skipping:  # the rest of an oversized line
                    skipping = False
                elif line.strip():
                    loop.call_soon_threadsafe(self._on_line, line)
            if len(buf) > MAX_COMMAND_BYTES and not skipping:  # error reply, then dropped
                loop.call_soon_threadsafe(self._on_line, bytes(buf))
                skipping = True
            if skipping:  # (buf holds no newline here)
                buf.clear()

    def _on_line(self, line: bytes) -> None:
        try:
            cmd = parse_command(line)
        except ProtocolError as e:
            self.error(str(e), e.attempt, e.op)
            return
        try:
            if isinstance(cmd, Start):
                self._start(cmd)
            elif isinstance(cmd, (Stop, Reap)):
                task = asyncio.create_task(self._stop(cmd) if isinstance(cmd, Stop)
                                           else self._reap(cmd))
                self._stops.add(task)
                task.add_done_callback(self._stops.discard)
            elif isinstance(cmd, Attach):
                self._attach(cmd)
            elif isinstance(cmd, Procs):
                task = asyncio.create_task(self._procs(cmd))
                self._stops.add(task)
                task.add_done_callback(self._stops.discard)
            elif isinstance(cmd, Dump):
                task = asyncio.create_task(self._dump(cmd))
                self._stops.add(task)
                task.add_done_callback(self._stops.discard)
            elif isinstance(cmd, Probe):
                task = asyncio.create_task(self._probe(cmd))
                self._stops.add(task)  # ended with the agent, like stops
                task.add_done_callback(self._stops.discard)
            elif isinstance(cmd, Simple):
                if cmd.op == "ping":
                    self.emit(Pong(cmd.id))
                elif cmd.op == "list":
                    self.emit(Runs(self._runs()))
                elif cmd.op == "shutdown":
                    self._done.set()
        except Exception as e:  # never die on one command
            log(f"command failed: {e!r}")
            attempt = getattr(cmd, "attempt", None)
            self.error(f"internal error: {e}", attempt)

    async def _procs(self, cmd: Procs) -> None:
        self.emit(await asyncio.to_thread(procs.answer, cmd, self._last_gpus))

    async def _dump(self, cmd: Dump) -> None:
        """py-spy runs as subprocesses of the event loop, bounded (stacks.py)."""
        self.emit(await stacks.dump(cmd, self.node, self.root))

    async def _probe(self, cmd: Probe) -> None:
        """Answered off the event loop: the peers' ssh checks take seconds."""
        self.emit(await asyncio.to_thread(probe.answer, cmd, self.root))

    # ---- telemetry -------------------------------------------------------

    async def _telemetry_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time() + self.interval
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += self.interval
            if next_at < loop.time():  # fell behind (suspended?): don't burst
                next_at = loop.time() + self.interval
            try:
                host = self._host_sampler.sample()
                gpus = await asyncio.to_thread(self._nvml.sample)
                self._last_gpus = gpus
            except Exception as e:
                log(f"telemetry failed: {e!r}")
                continue
            self.emit(Telemetry(self.node, time.time(), host["cpu_percent"],
                                host["memory_percent"], host["memory_used_gb"],
                                tuple(host["load"]), tuple(gpus)))

    # ---- start / attach --------------------------------------------------

    def _run_dir(self, attempt: str) -> Path:
        return runs.runs_dir(self.root) / attempt

    def _watch(self, attempt: str, output: int = 0, metrics: int = 0,
               proc: subprocess.Popen[bytes] | None = None) -> Watch:
        old = self._watches.pop(attempt, None)
        if old is not None:
            old.close()
            if proc is None:
                proc = old.proc
        d = self._run_dir(attempt)
        w = Watch(attempt, d, LineTail(d / runs.OUTPUT, output),
                  LineTail(d / runs.METRICS, metrics), proc)
        self._watches[attempt] = w
        self._wake.set()
        return w

    def _start(self, cmd: Start) -> None:
        d = self._run_dir(cmd.attempt)
        if cmd.attempt in self._watches or any(
                (d / f).exists() for f in (runs.SPEC, runs.PID, runs.EXIT)):
            self._start_again(cmd.attempt)
            return
        as_owner = cmd.uid is not None and cmd.uid != os.geteuid()
        if as_owner and os.geteuid() != 0:
            self.error(f"start: cannot run the job as its owner (uid {cmd.uid}): the agent on "
                       f"node {self.node} runs as uid {os.geteuid()}, not root; run the engine "
                       "as root to run other users' jobs, or as their owner", cmd.attempt,
                       "start")
            return
        try:
            if as_owner:
                self._open_way()
            d.mkdir(parents=True, exist_ok=True)
            if as_owner:  # the owner may enter it, not list or write it
                os.chmod(d, 0o711)  # noqa: S103 — traverse only, no read or write
            runs.write_json_atomic(d / runs.SPEC, {
                "attempt": cmd.attempt, "argv": list(cmd.argv), "cwd": cmd.cwd,
                "gpus": list(cmd.gpus), "env_names": sorted(cmd.env), "created": time.time(),
            })
            if as_owner:
                os.chmod(d / runs.SPEC, 0o600)
        except OSError as e:
            self.error(f"cannot create run directory {d}: {e}", cmd.attempt, "start")
            return
        env = dict(cmd.env)
        env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # CUDA indices == NVML indices
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in cmd.gpus)
        env["LLMCONSOLE_ATTEMPT"] = cmd.attempt
        env["LLMCONSOLE_RUN_DIR"] = str(d)
        env["PYTHONUNBUFFERED"] = "1"
        cwd = cmd.cwd or str(d / runs.WORK if as_owner else d)
        owner = ["--uid", str(cmd.uid)] if as_owner else []
        argv = [sys.executable, "-I", "-S", str(SUPERVISE), str(d),
                "--cwd", cwd, "--grace", str(self.grace), *owner, "--", *cmd.argv]
        proc = None
        try:
            out = os.open(d / runs.OUTPUT, os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                          0o600 if as_owner else 0o644)
            try:
                # stdout/stderr: output.log, so even a supervisor crash is visible
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                        cwd=d, env=env, start_new_session=True, close_fds=True)
            finally:
                os.close(out)
        except OSError as e:
            message = f"cannot start supervisor {argv[0]}: {e}"
            self.error(message, cmd.attempt, "start")
            runs.write_json_atomic(d / runs.EXIT, {"code": 127, "signal": None,
                                                   "ended": time.time(), "child": None,
                                                   "error": message})
        self._watch(cmd.attempt, proc=proc)

    def _runs(self) -> tuple[RunSummary, ...]:
        return tuple(RunSummary(**r) for r in runs.scan_runs(self.root, self.host))

    def _open_way(self) -> None:
        """Let other users traverse (o+x) the agent's root and runs/, so that
        a job running as its owner reaches its run directory; never o+r or
        o+w: nobody else may list or add run directories."""
        base = runs.runs_dir(self.root)
        for path, drop in ((self.root, 0), (base, 0o006)):
            mode = path.stat().st_mode & 0o7777
            wanted = (mode & ~drop) | 0o001
            if wanted != mode:
                os.chmod(path, wanted)

    def _start_again(self, attempt: str) -> None:
        """A start for an attempt that already exists: answer as if attached."""
        w = self._watches.get(attempt)
        if w is not None:
            if w.started_sent and w.pid_doc is not None:
                self._emit_started(w)
            return  # otherwise "started" (or exited/lost) is still to come
        d = self._run_dir(attempt)
        exit_doc = runs.read_json(d / runs.EXIT)
        if exit_doc is not None:
            self._emit_exited(attempt, exit_doc)
            return
        w = self._watch(attempt)
        w.pid_doc = runs.read_json(d / runs.PID)
        if w.pid_doc is not None and w.pid_doc.get("child") is not None:
            self._emit_started(w)

    def _attach(self, cmd: Attach) -> None:
        d = self._run_dir(cmd.attempt)
        if not d.is_dir():
            self.error(f"attach: no run directory for attempt {cmd.attempt}", cmd.attempt,
                       "attach")
            return
        w = self._watch(cmd.attempt, cmd.output, cmd.metrics)
        w.started_sent = True  # an attach never resends "started"
        w.pid_doc = runs.read_json(d / runs.PID)

    # ---- stop ------------------------------------------------------------

    async def _stop(self, cmd: Stop) -> None:
        d = self._run_dir(cmd.attempt)
        if not d.is_dir():
            self.error(f"stop: no run directory for attempt {cmd.attempt}", cmd.attempt, "stop")
            return
        grace = self.grace if cmd.grace is None else cmd.grace
        if cmd.attempt not in self._watches:
            # Not tailed (e.g. after an agent restart, before attach): make sure
            # the stop still ends in "exited"/"lost", without replaying output.
            exit_doc = runs.read_json(d / runs.EXIT)
            if exit_doc is not None:
                self._emit_exited(cmd.attempt, exit_doc)
                return
            fresh = self._watch(cmd.attempt, _size(d / runs.OUTPUT), _size(d / runs.METRICS))
            fresh.started_sent = True
            fresh.pid_doc = runs.read_json(d / runs.PID)
        try:
            runs.write_json_atomic(d / runs.STOP, {"requested": time.time(), "grace": grace})
        except OSError as e:
            log(f"cannot write stop marker for {cmd.attempt}: {e}")
        # A stop right after start: wait (briefly) for the job's pgid.
        w = self._watches.get(cmd.attempt)
        deadline = time.monotonic() + 5.0
        pid_doc = runs.read_json(d / runs.PID)
        while pid_doc is None and time.monotonic() < deadline:
            if (d / runs.EXIT).exists():
                break
            if w is not None and w.proc is not None and w.proc.poll() is not None:
                break
            await asyncio.sleep(0.005)
            pid_doc = runs.read_json(d / runs.PID)
        pgid = None
        exclude: set[int] = set()
        if pid_doc is not None:
            pgid = pid_doc.get("pgid") if isinstance(pid_doc.get("pgid"), int) else None
            if isinstance(pid_doc.get("supervisor"), int):
                exclude.add(pid_doc["supervisor"])
        if w is not None and w.proc is not None:
            exclude.add(w.proc.pid)
        # each process gets SIGTERM once: the group, then those that left it
        runs.signal_group(pgid, signal.SIGTERM)
        strays = await asyncio.to_thread(runs.find_attempt_processes, cmd.attempt, d, exclude,
                                         pgid)
        runs.kill_pids(strays, signal.SIGTERM)
        end = time.monotonic() + grace
        while time.monotonic() < end:
            if not runs.group_alive(pgid) and not any(
                    runs.process_alive(p) for p in strays):
                return
            await asyncio.sleep(0.05)
        if runs.signal_group(pgid, signal.SIGKILL):
            log(f"{cmd.attempt}: still running {grace:g} s after SIGTERM, sent SIGKILL")
        strays = await asyncio.to_thread(runs.find_attempt_processes, cmd.attempt, d, exclude,
                                         pgid)
        runs.kill_pids(strays, signal.SIGKILL)

    async def _reap(self, cmd: Reap) -> None:
        """See the module docstring. The run directory is matched as the
        engine names it and as this node resolves it (`~`, symlinks)."""
        grace = self.grace if cmd.grace is None else cmd.grace
        dirs = {Path(cmd.run_dir), Path(os.path.realpath(os.path.expanduser(cmd.run_dir)))}
        exclude: set[int] = set()
        for d in dirs:  # the launching node's supervisor, when that node is this host
            doc = runs.read_json(d / runs.PID)
            if doc is not None and doc.get("host") == self.host \
                    and isinstance(doc.get("supervisor"), int):
                exclude.add(doc["supervisor"])

        def find() -> list[int]:
            return sorted({pid for d in dirs
                           for pid in runs.find_attempt_processes(cmd.attempt, d, exclude)})

        found = await asyncio.to_thread(find)
        if not found:
            return
        log(f"reap {cmd.attempt}: SIGTERM to {len(found)} process(es) of {cmd.run_dir}")
        runs.kill_pids(found, signal.SIGTERM)
        end = time.monotonic() + grace
        while time.monotonic() < end and any(runs.process_alive(p) for p in found):
            await asyncio.sleep(0.05)
        left = await asyncio.to_thread(find)
        if left:
            log(f"reap {cmd.attempt}: {len(left)} still running {grace:g} s after SIGTERM, "
                "sent SIGKILL")
            runs.kill_pids(left, signal.SIGKILL)

    # ---- tailing ---------------------------------------------------------

    async def _tail_loop(self) -> None:
        while True:
            busy = False
            now = time.monotonic()
            for attempt, w in list(self._watches.items()):
                try:
                    finished, more = self._poll(w, now)
                except Exception as e:  # keep tailing the others
                    log(f"tailing {attempt} failed: {e!r}")
                    finished, more = False, False
                busy = busy or more
                if finished and self._watches.get(attempt) is w:
                    del self._watches[attempt]
                    w.close()
                    if w.proc is not None and w.proc.poll() is None:
                        self._unreaped.append(w.proc)  # exits right after exit.json
            self._unreaped = [p for p in self._unreaped if p.poll() is None]
            if busy:
                await asyncio.sleep(0)
                continue
            young = any(now - w.since < YOUNG_S for w in self._watches.values())
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), FAST_POLL_S if young else POLL_S)
            except asyncio.TimeoutError:
                pass

    def _emit_started(self, w: Watch) -> None:
        doc = w.pid_doc or {}
        self.emit(Started(w.attempt, _int(doc.get("child")), _int(doc.get("pgid")),
                          _int(doc.get("supervisor")), _num(doc.get("started"))))

    def _emit_exited(self, attempt: str, doc: dict[str, Any]) -> None:
        if doc.get("error"):
            self.error(str(doc["error"]), attempt, "start")
        self.emit(Exited(attempt, _int(doc.get("code")), _int(doc.get("signal")),
                         _num(doc.get("ended"))))

    def _stream(self, w: Watch, final: bool) -> bool:
        """Emit new lines of both files; True if more is waiting. With `final`
        (the writer is done), an unterminated last line is emitted too."""
        more = False
        for start, end, raw in w.output.read(CHUNK):
            self._emit_log(w.attempt, start, end, raw)
        for start, end, raw in w.metrics.read(CHUNK):
            self._emit_metric(w.attempt, start, end, raw)
        for tail in (w.output, w.metrics):
            if tail.truncated:
                tail.truncated = False
                self.error(f"{tail.path.name} shrank; streaming it again from offset 0",
                           w.attempt)
        more = not (w.output.at_eof and w.metrics.at_eof)
        if final and not more:
            piece = w.output.flush()
            if piece is not None:
                self._emit_log(w.attempt, *piece)
            piece = w.metrics.flush()
            if piece is not None:
                self._emit_metric(w.attempt, *piece)
        self.flush()
        return more

    def _emit_log(self, attempt: str, start: int, end: int, raw: bytes) -> None:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        self.emit(Log(attempt, start, end, raw.decode("utf-8", errors="surrogateescape")),
                  flush=False)

    def _emit_metric(self, attempt: str, start: int, end: int, raw: bytes) -> None:
        if not raw.strip():
            return
        try:
            record = json.loads(raw)
        except ValueError as e:
            self.error(f"metrics.jsonl offset {start}: malformed line skipped ({e})", attempt)
            return
        if not isinstance(record, dict):
            self.error(f"metrics.jsonl offset {start}: not a JSON object, skipped", attempt)
            return
        self.emit(Metric(attempt, start, end, record), flush=False)

    def _poll(self, w: Watch, now: float) -> tuple[bool, bool]:
        """One look at a run -> (finished, more data waiting)."""
        if w.proc is not None:
            w.proc.poll()  # reap our supervisor child once it ends
        d = w.dir
        if w.exit_doc is None:
            w.exit_doc = runs.read_json(d / runs.EXIT) if (d / runs.EXIT).exists() else None
        if not w.started_sent:
            w.pid_doc = runs.read_json(d / runs.PID)
            if w.pid_doc is not None and w.pid_doc.get("child") is not None:
                self._emit_started(w)
                w.started_sent = True
            elif w.exit_doc is None:
                return self._check_lost(w, now), False
        if w.exit_doc is not None:
            if self._stream(w, final=True):
                return False, True
            self._emit_exited(w.attempt, w.exit_doc)
            return True, False
        more = self._stream(w, final=False)
        return self._check_lost(w, now), more

    def _check_lost(self, w: Watch, now: float) -> bool:
        if now < w.next_liveness:
            return False
        w.next_liveness = now + LIVENESS_EVERY_S
        reason = self._lost_reason(w)
        if reason is None:
            return False
        if (w.dir / runs.EXIT).exists():  # it finished meanwhile: exited, next poll
            return False
        while self._stream(w, final=True):
            pass
        self.emit(Lost(w.attempt, reason))
        return True

    def _lost_reason(self, w: Watch) -> str | None:
        d = w.dir
        doc = w.pid_doc or runs.read_json(d / runs.PID)
        if doc is None:
            if w.proc is not None:
                rc = w.proc.poll()
                if rc is None:
                    return None
                return (f"supervisor exited with status {rc} before starting the job "
                        "(see output.log)")
            age = runs.mtime_age([d / runs.HEARTBEAT, d / runs.SPEC, d])
            if age is not None and age > runs.STALE_S:
                return f"never started: no supervisor record and no activity for {age:.0f} s"
            return None
        w.pid_doc = doc
        host = doc.get("host")
        if isinstance(host, str) and host != self.host:
            age = runs.mtime_age([d / runs.HEARTBEAT])
            if age is None or age > runs.STALE_S:
                return f"supervisor on {host} silent: heartbeat stale"
            return None
        if runs.supervisor_alive(doc):
            return None
        pgid = doc.get("pgid") if isinstance(doc.get("pgid"), int) else None
        if runs.group_alive(pgid):
            if not w.orphaned:
                w.orphaned = True
                log(f"{w.attempt}: supervisor {doc.get('supervisor')} died; "
                    "its job is still running, waiting for it")
            return None
        if w.orphaned:
            return (f"supervisor (pid {doc.get('supervisor')}) died; the job ended later "
                    "with an unknown status")
        return f"supervisor (pid {doc.get('supervisor')}) is gone and left no exit record"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m engine.agent",
                                     description="llmconsole node agent (JSON lines on "
                                                 "stdin/stdout)")
    parser.add_argument("--node", required=True)
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--grace", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.interval <= 0 or args.grace < 0:
        parser.error("--interval must be > 0 and --grace >= 0")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    agent = Agent(args.node, args.root, args.interval, args.grace, nvml=load_pynvml())
    try:
        return asyncio.run(agent.run())
    except KeyboardInterrupt:
        return 0
