"""Hostile input against a real daemon: random requests on every route of
`engine.api.server` (random methods, paths, query strings and bodies: JSON of
random shape, job specs with one field mutated, bytes that are not UTF-8,
bodies over the size limit), each answer checked: under 500, JSON (a log is
text), an error one line. `run(budget_s)` is the bounded campaign
`python -m chaos` calls; `send` and `answer_problem` are the pieces
tests/fuzz/test_api_fuzz.py shares with it.

Contract of `run`: it starts a daemon in a throw-away home (loopback, the
head node only), submits one short job, sends random requests for about
`budget_s` seconds, checks after each that the daemon still answers
/v1/health, and returns ``{"inputs": n, "crashes": n, "5xx": n, "problems":
[...]}``: `crashes` counts the times the daemon stopped answering (it is
started again), `5xx` the answers of 500 or more, `problems` the first few
answers that broke the rules above, in words. Never sends POST /v1/shutdown
(the caller owns the daemon, so it would obey) nor follows /v1/events (an
endless stream); both are sent with the wrong method instead."""

from __future__ import annotations

import json
import random
import shutil
import socket
import string
import sys
import time
from pathlib import Path
from typing import Any

from engine.errors import MAX_REQUEST_BYTES

Request = tuple[str, str, bytes | None, dict[str, str]]

#: (method, path) of every route; {id} and {name} are filled in at random.
ROUTES: tuple[tuple[str, str], ...] = (
    ("GET", "/v1/health"),
    ("POST", "/v1/jobs"),
    ("POST", "/v1/jobs:batch"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/{id}"),
    ("POST", "/v1/jobs/{id}/cancel"),
    ("POST", "/v1/jobs/{id}/retry"),
    ("POST", "/v1/jobs/{id}/priority"),
    ("GET", "/v1/jobs/{id}/logs"),
    ("GET", "/v1/jobs/{id}/metrics"),
    ("GET", "/v1/jobs/{id}/processes"),
    ("GET", "/v1/nodes"),
    ("POST", "/v1/nodes:check"),
    ("POST", "/v1/nodes/{name}/drain"),
    ("POST", "/v1/nodes/{name}/undrain"),
    ("GET", "/v1/events"),
    ("POST", "/v1/shutdown"),
)
#: Routes that are only sent with a wrong method (see the module docstring).
WRONG_METHOD_ONLY = {("GET", "/v1/events"), ("POST", "/v1/shutdown")}
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")
QUERY_KEYS = ("state", "owner", "limit", "attempt", "follow", "tail", "name", "since_step",
              "types", "x")
ODD_TEXT = ("", "-1", "0", "1", "2", "999999999999999999999", "1e9", "nan", "true", "٣",
            "-rf", "; rm -rf ~", "$(reboot)", "`id`", "a\nb", "\x00", "\udcff", "é" * 300,
            "running,queued", "bogus", "%00", "%ff", "..", "../../etc/passwd", " 1 ")
# A spec that the API accepts: a command that runs and ends at once.
VALID_SPEC: dict[str, Any] = {"name": "fuzz", "kind": "command", "argv": ["/bin/true"],
                              "launcher": "local", "resources": {"cpus": 1}, "env": {},
                              "retries": 0, "priority": 0}


def random_text(rng: random.Random, size: int = 12) -> str:
    """Text of letters, punctuation, control characters and other scripts."""
    if rng.random() < 0.3:
        return rng.choice(ODD_TEXT)
    alphabet = string.printable + "\x00\x01\x1b\x7f\u0085\u2028\u200b\ufeffé漢🙂\udcff"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, size)))


def random_json(rng: random.Random, depth: int = 0) -> Any:
    """A JSON value of random shape."""
    roll = rng.random()
    if depth > 3 or roll < 0.5:
        return rng.choice([None, True, False, 0, -1, 2**63, 2**64, -(2**70), 1.5, 1e308,
                           -0.0, random_text(rng), rng.randint(-5, 5)])
    if roll < 0.75:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {random_text(rng, 6): random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def mutated_spec(rng: random.Random) -> dict[str, Any]:
    """`VALID_SPEC` with one field set to a random value, removed, or added.
    The program stays a path that runs nothing harmful: a mutated argv keeps
    /bin/true first or names a program that does not exist."""
    spec = json.loads(json.dumps(VALID_SPEC))
    field = rng.choice([*spec, "resources.cpus", "resources.nodes", "resources.memory_gb",
                        "resources.nodes_with", "env.X", "argv[0]", "argv[1]", "workdir",
                        "profile", "unknown"])
    value = random_json(rng)
    if field == "argv[0]":
        spec["argv"] = [f"/nonexistent/{random_text(rng)}" if rng.random() < 0.8 else ""]
    elif field == "argv[1]":
        spec["argv"] = ["/bin/true", value if rng.random() < 0.5 else random_text(rng, 40)]
    elif field == "argv":
        spec["argv"] = value if not isinstance(value, list) or not value else ["/bin/true",
                                                                             *value]
    elif "." in field:
        table, key = field.split(".")
        spec[table] = {**spec[table], (random_text(rng, 8) if key == "X" else key): value}
    elif rng.random() < 0.2:
        spec.pop(field, None)
    else:
        spec[field] = value
    return spec


def random_body(rng: random.Random) -> bytes | None:
    roll = rng.random()
    if roll < 0.15:
        return None
    if roll < 0.25:
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))  # not UTF-8
    if roll < 0.3:
        return b"[" * rng.choice([10, 1000, 100_000])  # nested too deeply, or not closed
    if roll < 0.55:
        return json.dumps({"spec": mutated_spec(rng), "after": random_json(rng)}
                          if rng.random() < 0.7 else
                          {"jobs": [{"spec": mutated_spec(rng)}]}).encode()
    return json.dumps(random_json(rng)).encode("utf-8", "surrogateescape")


def _quote(text: str) -> str:
    """`text` as a URL part: unreserved characters as they are, the rest
    percent-encoded from its UTF-8 (a lone surrogate as the byte it stands for)."""
    raw = text.encode("utf-8", "surrogateescape")
    safe = (string.ascii_letters + string.digits + "-._~").encode()
    return "".join(chr(b) if b in safe else f"%{b:02X}" for b in raw)


def random_request(rng: random.Random, job_ids: list[int]) -> Request:
    """One request: a route (or a random path), a method (right, mostly), a
    query string and a body."""
    method, path = rng.choice(ROUTES)
    if (method, path) in WRONG_METHOD_ONLY or rng.random() < 0.1:
        # HEAD is GET's twin in aiohttp: HEAD /v1/events would stream too
        wrong = {method, "HEAD"} if (method, path) in WRONG_METHOD_ONLY else {method}
        method = rng.choice([m for m in METHODS if m not in wrong])
    if rng.random() < 0.05:
        path = "/" + "/".join(_quote(random_text(rng, 8)) for _ in range(rng.randint(0, 4)))
    ids = [*job_ids, 0, -1, 2**63, 99999] if job_ids else [1]
    job = rng.choice([str(rng.choice(ids)), _quote(random_text(rng, 6))])
    name = _quote(random_text(rng, 8)) or "x"
    path = path.replace("{id}", job).replace("{name}", "fuzz-" + name)
    query = "&".join(f"{rng.choice(QUERY_KEYS)}={_quote(random_text(rng, 8))}"
                     for _ in range(rng.randint(0, 3)))
    if query and "follow=1" not in query:
        path += "?" + query
    body = random_body(rng) if method not in ("GET", "HEAD") or rng.random() < 0.1 else None
    kind = rng.choices(["application/json", "text/plain", "", "x/\x7f"], [80, 8, 8, 4])[0]
    headers = {"Content-Type": kind}  # \x7f: a header aiohttp cannot parse
    return method, path, body, headers


def send(socket_path: Path | str, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None, timeout: float = 30.0
         ) -> tuple[int, dict[str, str], bytes]:
    """One request as raw bytes over the Unix socket (so that any path goes
    out as given), read to the end: status, headers (lower-case names), body
    (de-chunked)."""
    head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
    for key, value in (headers or {}).items():
        if value:
            head += f"{key}: {value}\r\n"
    if body is not None:
        head += f"Content-Length: {len(body)}\r\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(socket_path))
        sock.sendall(head.encode("utf-8", "surrogateescape") + b"\r\n" + (body or b""))
        return parse_response(read_answer(sock))


def read_answer(sock: socket.socket) -> bytes:
    """The bytes of one answer: up to its Content-Length when it has one (a
    server may keep the connection open a while after refusing a body it has
    not read), else to the end of the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            for line in head.split(b"\r\n")[1:]:
                key, _colon, value = line.partition(b":")
                if key.strip().lower() == b"content-length" and len(body) >= int(value):
                    return data
    return data


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _sep, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/1."):
        raise ValueError(f"not an HTTP answer: {raw[:80]!r}")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        key, _colon, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    return status, headers, body


def _dechunk(data: bytes) -> bytes:
    out: list[bytes] = []
    pos = 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            return b"".join(out)
        size = int(data[pos:end].split(b";")[0] or b"0", 16)
        if size == 0:
            return b"".join(out)
        out.append(data[end + 2:end + 2 + size])
        pos = end + 2 + size + 2


def answer_problem(method: str, path: str, status: int, headers: dict[str, str],
                   body: bytes) -> str | None:
    """What is wrong with an answer, in words, or None: a 5xx; an error that
    is not JSON {"error": one line}; a success that is not JSON (a job's log
    is text)."""
    where = f"{method} {path[:80]!r}"
    if status >= 500:
        return f"{where}: {status} {body[:200]!r}"
    if method == "HEAD":
        return None
    kind = headers.get("content-type", "")
    if status < 300 and "/logs" in path and kind.startswith("text/plain"):
        return None
    if not kind.startswith(("application/json", "application/x-ndjson")):
        return f"{where}: {status} answered {kind or 'no content type'}: {body[:120]!r}"
    try:
        doc = json.loads(body)
    except ValueError:
        return f"{where}: {status} body is not JSON: {body[:120]!r}"
    if status >= 400:
        error = doc.get("error") if isinstance(doc, dict) else None
        if not isinstance(error, str) or "\n" in error or "Traceback" in error:
            return f"{where}: {status} error is not one line: {body[:200]!r}"
    return None


def oversized(socket_path: Path | str, timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
    """POST /v1/jobs announcing a body of 16 times the limit and sending only
    its first bytes: the status and the JSON of an answer that must come
    before the rest is sent (413)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(socket_path))
        sock.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                     b"Content-Type: application/json\r\n"
                     + f"Content-Length: {16 * MAX_REQUEST_BYTES}\r\n\r\n".encode()
                     + b'{"spec": ')
        status, _headers, body = parse_response(read_answer(sock))
    return status, json.loads(body)


def _up(socket_path: Path) -> bool:
    try:
        return send(socket_path, "GET", "/v1/health", timeout=10)[0] == 200
    except (OSError, ValueError):
        return False


def run(budget_s: float, seed: int | None = None) -> dict[str, Any]:
    """The bounded campaign (see the module docstring)."""
    from chaos.engine_handle import new_engine  # the daemon's fixture, imported when run

    rng = random.Random(seed)
    handle = new_engine()
    sock = handle.home / "engine.sock"
    counts: dict[str, Any] = {"inputs": 0, "crashes": 0, "5xx": 0, "problems": []}
    try:
        handle.serve()
        first = send(sock, "POST", "/v1/jobs", json.dumps({"spec": VALID_SPEC}).encode())
        job_ids = [int(json.loads(first[2])["id"])] if first[0] == 201 else []
        deadline = time.monotonic() + budget_s
        while time.monotonic() < deadline:
            request = random_request(rng, job_ids)
            counts["inputs"] += 1
            try:
                answer = send(sock, *request)
                problem = answer_problem(request[0], request[1], *answer)
                if answer[0] >= 500:
                    counts["5xx"] += 1
            except (OSError, ValueError) as err:
                problem = f"{request[0]} {request[1][:80]!r}: no answer ({err})"
            if problem and len(counts["problems"]) < 10:
                counts["problems"].append(problem)
            if problem and not _up(sock):
                counts["crashes"] += 1
                handle.close()
                handle.serve()
        status, _doc = oversized(sock)
        counts["inputs"] += 1
        if status != 413 and len(counts["problems"]) < 10:
            counts["problems"].append(f"a body over the limit got {status}, not 413")
        if not _up(sock):
            counts["crashes"] += 1
    finally:
        handle.close()
        shutil.rmtree(handle.home, ignore_errors=True)
    return counts


if __name__ == "__main__":
    print(json.dumps(run(float(sys.argv[1]) if len(sys.argv) > 1 else 10.0), indent=1))
