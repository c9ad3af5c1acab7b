"""The engine client every UI uses (the CLI, the console, scripts): HTTP/1.1
over the daemon's Unix socket, standard library only, one kept-alive
connection. Errors arrive as the `engine.errors` class the server raised,
with its one-line message; a missing daemon is `Unavailable`, a socket this
user may not use (someone else's, or a path too long for a Unix socket) is
`Unreachable`, raised before any connection is tried where it can be, and a
request body over `MAX_REQUEST_BYTES` is `TooLarge`, raised before sending.

Importing it is cheap (the CLI's `jobs` and `cancel` pay for it on every
call): JSON calls go over `Wire`, a plain socket; http.client (with the
email package under it) is imported only by the streamed calls, logs and
events.

    client = EngineClient()            # $LLMCONSOLE_SOCKET or <home>/engine.sock
    job = client.submit(spec.to_dict())
    for line in client.logs(job["id"], follow=True): print(line)
    sys.stdout.buffer.writelines(client.logs(job["id"]).raw())   # the bytes as written
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import quote, urlencode

from engine import paths
from engine.errors import (
    BY_STATUS,
    MAX_REQUEST_BYTES,
    EngineError,
    TooLarge,
    Unavailable,
    Unreachable,
)

# typing's TYPE_CHECKING without importing typing (3 ms of every CLI call): the
# annotations are strings (from __future__ import annotations)
TYPE_CHECKING = False
if TYPE_CHECKING:
    import http.client
    from collections.abc import Callable
    from typing import Any

    Connect = Callable[[Path, float | None], http.client.HTTPConnection]

_connection_class: Connect | None = None


def _unix_http_connection() -> Connect:
    """`UnixHTTPConnection`, an http.client connection over a Unix socket,
    made on first use (so importing this module does not import http.client)."""
    global _connection_class
    if _connection_class is None:
        import http.client

        class UnixHTTPConnection(http.client.HTTPConnection):
            def __init__(self, socket_path: Path, timeout: float | None) -> None:
                super().__init__("localhost", timeout=timeout)
                self.socket_path = socket_path

            def connect(self) -> None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                if self.timeout is not None:
                    sock.settimeout(self.timeout)
                try:
                    sock.connect(str(self.socket_path))
                except OSError:
                    sock.close()
                    raise
                self.sock = sock

        _connection_class = UnixHTTPConnection
    return _connection_class


def __getattr__(name: str) -> Any:
    if name == "UnixHTTPConnection":  # tests send raw requests through it
        return _unix_http_connection()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ProtocolError(ValueError):
    """A reply `Wire` cannot read (no Content-Length)."""


class Wire:
    """One kept-alive HTTP/1.1 connection for JSON calls: the request goes out
    in a single write and the reply is read by Content-Length, which halves
    the wake-ups per call compared with http.client (headers and body are
    two writes there)."""

    def __init__(self, socket_path: Path, timeout: float | None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(socket_path))
        except OSError:
            self.sock.close()
            raise
        self.rfile = self.sock.makefile("rb")

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()

    def call(self, method: str, path: str, payload: bytes | None) -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n"
        if payload is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        self.sock.sendall(head.encode("ascii") + b"\r\n" + (payload or b""))
        status_line = self.rfile.readline(65537)
        if not status_line:
            raise ConnectionResetError("the engine closed the connection")
        status = int(status_line.split(None, 2)[1])
        length = None
        while True:
            line = self.rfile.readline(65537)
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise ProtocolError("reply without Content-Length")
        return status, self.rfile.read(length)


class LineStream:
    """The lines of a streamed reply: iterated, as text without their line
    end (bytes that are not UTF-8 shown as U+FFFD); through `raw()`, as the
    bytes the engine sent, line ends included. Iterate one way only.
    `close()` may be called from another thread: it shuts the socket, so a
    reader blocked on a quiet stream wakes and the iteration ends."""

    def __init__(self, conn: http.client.HTTPConnection,
                 response: http.client.HTTPResponse) -> None:
        self._conn, self._response = conn, response
        self._closed = False

    def __iter__(self) -> Iterator[str]:
        for line in self.raw():
            yield line.decode("utf-8", errors="replace").rstrip("\n")

    def raw(self) -> Iterator[bytes]:
        """The reply's lines as bytes, exactly as sent (the last one may lack
        its newline)."""
        import http.client  # imported already: the stream came through it

        try:
            yield from self._response
        except (OSError, ValueError, http.client.HTTPException):
            if not self._closed:
                raise
        finally:
            self._response.close()
            self._conn.close()

    def close(self) -> None:
        self._closed = True
        sock = self._conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


CHECK_TIMEOUT_S = 90.0  # the engine gives a node's probe 60 s (engine.doctor.PROBE_TIMEOUT_S)


class EngineClient:
    def __init__(self, socket_path: Path | str | None = None, timeout: float = 30.0) -> None:
        self.socket_path = Path(socket_path) if socket_path else paths.socket_path()
        self.timeout = timeout
        self._wire: Wire | None = None

    # ------------------------------------------------------------ plumbing
    def close(self) -> None:
        if self._wire is not None:
            self._wire.close()
            self._wire = None

    def __enter__(self) -> EngineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unavailable(self, err: Exception) -> Unavailable:
        if isinstance(err, PermissionError):
            return self._denied()
        why = getattr(err, "strerror", None) or err
        return Unavailable(f"no engine answers on {self.socket_path} ({why}); "
                           f"start one with `llmconsole engine start`")

    def _denied(self) -> Unreachable:
        sock = self.socket_path
        where, owner = paths.owner_of(sock)
        share = "`llmconsole engine serve --socket-group G --socket-mode 660`"
        if where == sock:
            return Unreachable(
                f"no permission to use the engine socket {sock}: permission denied (it "
                f"belongs to {owner}); ask them to share it with {share}, or set "
                f"LLMCONSOLE_HOME to a folder of your own to run your own engine")
        return Unreachable(
            f"no permission to reach the engine socket {sock}: permission denied ({where} "
            f"belongs to {owner} and is closed to you); ask them to share the engine with "
            f"{share} and {where} open to group G, or set LLMCONSOLE_HOME to a folder of "
            f"your own to run your own engine")

    def _check_socket(self) -> None:
        problem = paths.socket_path_problem(self.socket_path)
        if problem is not None:
            raise Unreachable(problem)

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        payload = None if body is None else json.dumps(body).encode()
        if payload is not None and len(payload) > MAX_REQUEST_BYTES:
            raise TooLarge(f"the request is {len(payload)} bytes, over the engine's limit of "
                           f"{MAX_REQUEST_BYTES} bytes; send less (large data belongs in files "
                           f"that the job's arguments name)")
        self._check_socket()
        status, data = 0, b""
        for fresh in (False, True):
            try:
                if self._wire is None or fresh:
                    self.close()
                    self._wire = Wire(self.socket_path, self.timeout)
                status, data = self._wire.call(method, path, payload)
                break
            except (ConnectionResetError, BrokenPipeError) as err:
                self.close()
                if fresh:
                    raise self._unavailable(err) from err
                # a kept-alive connection the engine closed while idle: once more, fresh
            except (OSError, ValueError, IndexError) as err:  # ProtocolError is a ValueError
                self.close()
                raise self._unavailable(err) from err
        if status >= 400:
            raise _error(status, data)
        return json.loads(data)

    def _stream(self, path: str) -> LineStream:
        """A GET whose reply is read as it comes (logs, events), on its own
        connection with no timeout."""
        import http.client

        self._check_socket()
        conn = _unix_http_connection()(self.socket_path, None)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as err:
            conn.close()
            raise self._unavailable(err) from err
        if response.status >= 400:
            try:
                body = response.read()
            except (OSError, http.client.HTTPException):
                body = b""
            conn.close()
            raise _error(response.status, body)
        return LineStream(conn, response)

    # ----------------------------------------------------------------- API
    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", "/v1/health")
        return result

    def submit(self, spec: dict[str, Any], after: Sequence[int] = ()) -> dict[str, Any]:
        result: dict[str, Any] = self._json("POST", "/v1/jobs",
                                            {"spec": spec, "after": list(after)})
        return result

    def submit_many(
        self, items: Sequence[tuple[dict[str, Any], Sequence[int | dict[str, int]]]]
    ) -> list[dict[str, Any]]:
        """Several jobs in one request and one transaction: all or none. An
        `after` entry is a job id or ``{"batch": i}``, the batch's item i."""
        body = {"jobs": [{"spec": spec, "after": list(after)} for spec, after in items]}
        result: list[dict[str, Any]] = self._json("POST", "/v1/jobs:batch", body)
        return result

    def jobs(self, states: Sequence[str] = (), owner: int | None = None,
             limit: int | None = None) -> list[dict[str, Any]]:
        query = {k: v for k, v in (("state", ",".join(states)), ("owner", owner),
                                   ("limit", limit)) if v not in (None, "")}
        result: list[dict[str, Any]] = self._json("GET", "/v1/jobs?" + urlencode(query))
        return result

    def job(self, job_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"/v1/jobs/{int(job_id)}")
        return result

    def cancel(self, job_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._json("POST", f"/v1/jobs/{int(job_id)}/cancel")
        return result

    def retry(self, job_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._json("POST", f"/v1/jobs/{int(job_id)}/retry")
        return result

    def set_priority(self, job_id: int, priority: int) -> dict[str, Any]:
        result: dict[str, Any] = self._json("POST", f"/v1/jobs/{int(job_id)}/priority",
                                            {"priority": priority})
        return result

    def metrics(self, job_id: int, attempt: int | None = None,
                names: Sequence[str] = (), since_step: int | None = None) -> list[dict[str, Any]]:
        query = {k: v for k, v in (("attempt", attempt), ("name", ",".join(names)),
                                   ("since_step", since_step)) if v not in (None, "")}
        result: list[dict[str, Any]] = self._json(
            "GET", f"/v1/jobs/{int(job_id)}/metrics?" + urlencode(query))
        return result

    def nodes(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._json("GET", "/v1/nodes")
        return result

    def processes(self, job_id: int) -> list[dict[str, Any]]:
        """Every process of the job's current attempt: node, pid, ppid, name,
        rank, cpu_percent, rss_mb, gpu_memory_mb, state."""
        result: list[dict[str, Any]] = self._json("GET", f"/v1/jobs/{int(job_id)}/processes")
        return result

    def check_nodes(self, node: str | None = None) -> list[dict[str, Any]]:
        """Waits for the slowest node: its peers' ssh checks run one after
        another (CHECK_TIMEOUT_S, longer than the engine's probe limit)."""
        saved, self.timeout = self.timeout, max(self.timeout, CHECK_TIMEOUT_S)
        try:
            self.close()  # a connection with the longer timeout
            result: list[dict[str, Any]] = self._json(
                "POST", "/v1/nodes:check", {} if node is None else {"node": node})
        finally:
            self.close()
            self.timeout = saved
        return result

    def drain(self, node: str, reason: str = "") -> dict[str, Any]:
        result: dict[str, Any] = self._json("POST", f"/v1/nodes/{quote(node, safe='')}/drain",
                                            {"reason": reason})
        return result

    def undrain(self, node: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("POST", f"/v1/nodes/{quote(node, safe='')}/undrain",
                                            {})
        return result

    def shutdown(self) -> None:
        self._json("POST", "/v1/shutdown")

    def logs(self, job_id: int, attempt: int | None = None, follow: bool = False,
             tail: int | None = None) -> LineStream:
        """Lines of an attempt's output (stdout and stderr); with follow, until
        the attempt ends (or the stream is closed)."""
        query = {k: v for k, v in (("attempt", attempt), ("follow", 1 if follow else None),
                                   ("tail", tail)) if v is not None}
        return self._stream(f"/v1/jobs/{int(job_id)}/logs?" + urlencode(query))

    def events(self, types: Sequence[str] = ()) -> Iterator[dict[str, Any]]:
        """The engine's pushed events (job, node, telemetry, metric, log), as
        dicts, until the connection ends."""
        query = urlencode({"types": ",".join(types)}) if types else ""
        for line in self._stream("/v1/events?" + query):
            if line.strip():
                yield json.loads(line)


def _error(status: int, data: bytes) -> EngineError:
    try:
        message = json.loads(data)["error"]
    except (ValueError, KeyError, TypeError):
        message = data.decode(errors="replace").strip() or f"HTTP {status}"
    return BY_STATUS.get(status, EngineError)(str(message))
