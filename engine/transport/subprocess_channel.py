"""`SubprocessChannel`: a node agent behind a subprocess that speaks the
protocol (engine.agent.protocol) as JSON lines on its stdin and stdout; the
part of every transport that does not depend on where the agent runs.
Implements base.AgentChannel: the local transport is this with the local
agent command line, an SSH transport the same with ssh in front of it.

- `start` spawns `argv` with `env`, reads the hello within the hello
  timeout (15 s) and checks it (protocol.parse_event, check_hello: the same
  protocol version on both sides), killing the agent on any failure.
- stdout lines may be long (limit 16 MiB); lines that are not JSON objects
  are logged and skipped. stderr is drained continuously into the
  `engine.transport` logger and its last lines are kept for error messages,
  so the agent never blocks on a full stderr pipe.
- `send` takes a protocol command (its to_wire()) or a dict, as one ASCII
  line; `events()` yields each event after hello as a dict (parse_event
  types it); `close` asks the agent to shut down and kills it after 5 s;
  jobs, in their own sessions, are never touched.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from engine.agent.protocol import (
    Command,
    Hello,
    ProtocolError,
    Simple,
    VersionMismatch,
    check_hello,
    parse_event,
)
from engine.transport.base import AgentError

logger = logging.getLogger("engine.transport")

STREAM_LIMIT = 16 * 1024 * 1024
HELLO_TIMEOUT_S = 15.0
CLOSE_TIMEOUT_S = 5.0


class SubprocessChannel:
    """A node agent behind a subprocess speaking the protocol on its stdin/stdout."""

    def __init__(self, node: str, argv: Sequence[str], env: Mapping[str, str] | None = None,
                 hello_timeout: float = HELLO_TIMEOUT_S) -> None:
        """`argv` starts the agent (an argv list, never a shell string);
        `env` is its environment (None: this process's)."""
        self.node = node
        self.argv = list(argv)
        self.env = None if env is None else dict(env)
        self.hello: dict[str, Any] | None = None
        self.hello_event: Hello | None = None  # the same, typed
        self._hello_timeout = hello_timeout
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        self._send_lock = asyncio.Lock()

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def _error(self, message: str) -> AgentError:
        tail = " | ".join(self._stderr_tail)
        return AgentError(self.node, f"{message}; stderr: {tail}" if tail else message)

    async def start(self) -> None:
        if self._proc is not None:
            raise AgentError(self.node, "channel already started")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=self.env, limit=STREAM_LIMIT)
        except OSError as e:
            raise AgentError(self.node, f"cannot run {self.argv[0]}: {e}") from e
        self._stderr_task = asyncio.create_task(self._drain_stderr())
        try:
            hello = await asyncio.wait_for(self._read_hello(), self._hello_timeout)
        except asyncio.TimeoutError:
            await self._kill()
            raise self._error(f"no hello within {self._hello_timeout:g} s") from None
        except AgentError:
            await self._kill()
            raise
        try:
            event = parse_event(hello)
            if not isinstance(event, Hello):
                raise ProtocolError("the first event is not a hello")
            check_hello(event, self.node)
        except ProtocolError as e:
            await self._kill()
            raise AgentError(self.node, e.detail if isinstance(e, VersionMismatch)
                             else str(e)) from None
        self.hello = hello
        self.hello_event = event

    async def _read_hello(self) -> dict[str, Any]:
        while True:
            ev = await self._read_event()
            if ev is None:
                proc = self._proc
                code = None if proc is None else await proc.wait()
                if self._stderr_task is not None:  # collect its last words
                    await asyncio.wait([self._stderr_task], timeout=1.0)
                raise self._error(f"agent exited with status {code} before hello")
            if ev.get("ev") == "hello":
                return ev
            logger.warning("agent on %s: event before hello ignored: %.200s", self.node, ev)

    async def _read_event(self) -> dict[str, Any] | None:
        """The next event dict, or None at EOF. Non-JSON lines are logged and skipped."""
        proc = self._proc
        if proc is None or proc.stdout is None:
            return None
        while True:
            try:
                line = await proc.stdout.readline()
            except ValueError as e:  # a line over STREAM_LIMIT
                logger.error("agent on %s: oversized line dropped: %s", self.node, e)
                continue
            if not line:
                return None
            try:
                ev = json.loads(line)
            except ValueError:
                logger.warning("agent on %s: non-JSON output: %.200r", self.node, line)
                continue
            if isinstance(ev, dict):
                return ev
            logger.warning("agent on %s: non-object event: %.200r", self.node, line)

    async def _drain_stderr(self) -> None:
        proc = self._proc
        if proc is None or proc.stderr is None:
            return
        while True:
            try:
                line = await proc.stderr.readline()
            except ValueError:
                continue
            if not line:
                return
            text = line.decode("utf-8", errors="replace").rstrip()
            self._stderr_tail.append(text)
            logger.info("agent on %s: %s", self.node, text)

    async def send(self, message: Command | dict[str, Any]) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            raise self._error("agent is not running")
        wire = message if isinstance(message, dict) else message.to_wire()
        data = json.dumps(wire, separators=(",", ":")).encode("ascii") + b"\n"
        async with self._send_lock:
            try:
                proc.stdin.write(data)
                await proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError) as e:
                raise self._error(f"cannot send: {e}") from e

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            ev = await self._read_event()
            if ev is None:
                if self._proc is not None:
                    await self._proc.wait()
                return
            yield ev

    async def close(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        try:
            await self.send(Simple("shutdown"))
            if proc.stdin is not None:
                proc.stdin.close()
        except AgentError:
            pass
        try:
            await asyncio.wait_for(proc.wait(), CLOSE_TIMEOUT_S)
        except asyncio.TimeoutError:
            logger.warning("agent on %s did not shut down; killing it", self.node)
            await self._kill()
        if self._stderr_task is not None:
            await asyncio.wait([self._stderr_task], timeout=1.0)

    async def _kill(self) -> None:
        """Kill the agent process only (jobs live in their own sessions)."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        try:
            proc.kill()
        except ProcessLookupError:
            pass
        await proc.wait()
