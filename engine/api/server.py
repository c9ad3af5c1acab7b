"""The daemon's HTTP API, served on a Unix socket only. The caller's identity
is the socket's peer credentials (SO_PEERCRED), never anything the client
says. Every route answers JSON; errors are {"error": one line} with the
status of the `engine.errors` class that caused them, and so are aiohttp's
own refusals (unknown route 404, wrong method 405, body over
`MAX_REQUEST_BYTES` 413). Job ids are 1..2**63-1 (SQLite's integers): any
other id is 404 before the store is asked; a query integer outside its
range is 400 naming the parameter. A client that leaves a stream is normal
and logged at debug only.

Privacy on a shared engine: a job's logs, metrics, processes and the names
of its environment variables are readable by its owner, the engine's user,
root and the cluster's admins only, unless the cluster profile says
``share_logs = true``. Anyone else gets 403 naming the owner and the fix
(`show` answers without the env names and says why; the events stream leaves
out their log and metric events; a job's progress shows its step, not its
loss nor tokens/s). The list of jobs (names, states, owners)
stays visible to every caller: it is what the scheduler's queue shows.

    GET  /v1/health                       engine pid, uid, version, uptime
    POST /v1/jobs                         {"spec": {...}, "after": [ids]} -> job
    POST /v1/jobs:batch                   {"jobs": [{"spec":..., "after":...}, ...]}: all or none;
                                          an "after" item {"batch": i} is the batch's item i
    GET  /v1/jobs?state=&owner=&limit=    jobs, newest first
    GET  /v1/jobs/{id}                    job, attempts, history
    POST /v1/jobs/{id}/cancel | /retry    -> job
    GET  /v1/jobs/{id}/logs?attempt=&follow=1&tail=N   text, streamed when following
    GET  /v1/jobs/{id}/metrics?attempt=&name=&since_step=
    GET  /v1/jobs/{id}/processes          every process of its attempt, on every node
    GET  /v1/nodes                        nodes (state, rtt, software, check), GPUs, telemetry
    POST /v1/nodes:check                  {"node": NAME} or {}: the doctor's rows per node
    POST /v1/nodes/{name}/drain | /undrain   {"reason": "..."}: no new work there (admins)
    GET  /v1/events                       NDJSON stream: job, node, telemetry, metric, log
    POST /v1/shutdown                     stop the daemon (its owner or an admin)
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web, web_protocol, web_server

from engine import __version__
from engine.errors import MAX_REQUEST_BYTES, BadRequest, EngineError, Forbidden, NotFound, TooLarge
from engine.identity import user_name
from engine.lifecycle import JobState
from engine.model import BatchRef, Job, JobSpec, attempt_key
from engine.runtime import Caller, Runtime, attempt_view
from engine.spec_check import spec_from_payload

log = logging.getLogger("llmconsole.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_ID = 2**63 - 1  # SQLite's largest integer: ids, steps and counts stay below it
RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime", Runtime)
SHUTDOWN: web.AppKey[asyncio.Event] = web.AppKey("shutdown", asyncio.Event)


def peer_uid(request: web.Request) -> int:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None or sock.family != socket.AF_UNIX:
        raise Forbidden("the API answers on its Unix socket only")
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def caller(request: web.Request) -> Caller:
    return Caller.from_uid(peer_uid(request))


def may_read(rt: Runtime, me: Caller, owner_uid: int | None) -> bool:
    """Whether `me` may read the logs, metrics, processes and env names of a
    job owned by `owner_uid`: its owner, the engine's user, root (who can
    read the engine's files anyway), an admin, or anyone when the cluster
    profile says share_logs = true."""
    return (rt.cluster.share_logs or me.uid in (owner_uid, rt.engine_uid, 0)
            or me.name in rt.cluster.admins)


def _private(job: Job, what: str) -> str:
    owner = user_name(job.owner_uid)
    return (f"the {what} of job {job.id} are private to its owner {owner}: ask {owner} or an "
            f"admin; or set share_logs = true in the cluster profile")


def _readable_job(request: web.Request, what: str) -> tuple[Runtime, Job]:
    """The job of the route, if the caller may read its `what`; else Forbidden."""
    rt = _rt(request)
    job = rt.job(_job_id(request))
    if not may_read(rt, caller(request), job.owner_uid):
        raise Forbidden(_private(job, what))
    return rt, job


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except EngineError as err:
        return web.json_response({"error": one_line(err.message)}, status=err.status)
    except web.HTTPException as err:
        if err.status < 400:
            raise
        headers = {k: v for k, v in err.headers.items() if k.lower() == "allow"}
        return web.json_response({"error": one_line(_http_error(request, err))},
                                 status=err.status, headers=headers)
    except Exception as err:  # a bug: say so without leaking a traceback to clients
        log.exception("%s %s failed", request.method, request.path)
        return web.json_response({"error": one_line(f"internal error: {err}")}, status=500)


def one_line(text: str) -> str:
    """`text` with its control and line-breaking characters escaped (a path
    or a name from the request may hold a newline): errors are one line."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == " " else
                   ch.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for ch in text)


def _http_error(request: web.Request, err: web.HTTPException) -> str:
    """One line for one of aiohttp's own refusals."""
    where = f"{request.method} {request.path}"
    if isinstance(err, web.HTTPNotFound):
        return f"no such route: {where} (the routes are listed in engine/api/server.py)"
    if isinstance(err, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(err.allowed_methods))
        return f"{request.method} is not allowed on {request.path}; use {allowed}"
    if isinstance(err, web.HTTPRequestEntityTooLarge):
        return _too_large(request.content_length)
    return f"{where}: {err.reason}"


def _too_large(size: int | None) -> str:
    sent = f" {size} bytes," if size is not None else ""
    return (f"request body is{sent} over the engine's limit of {MAX_REQUEST_BYTES} bytes "
            f"(4 MiB); send less: large data belongs in files the job's arguments name")


class _JsonParseErrors(web_protocol.RequestHandler):
    """aiohttp's own answer to a request it could not parse (a bad request
    line or header, before any route or middleware sees it) as JSON
    {"error": one line} like every other answer, logged at debug only (at
    error for a 5xx) so that a hostile client cannot fill the engine's log
    with tracebacks."""

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        (log.error if status >= 500 else log.debug)(
            "unparsable request: %s %s", status, message or exc, exc_info=status >= 500)
        if request.writer.output_size > 0:  # an answer has begun: nothing more can be said
            raise ConnectionError("the answer was sent already; cannot add the error")
        what = " ".join((message or str(exc or "") or "malformed request").split())[:200]
        text = (f"internal error: {what}" if status >= 500 else
                f"bad request ({what}); send a well-formed HTTP/1.1 request")
        response = web.json_response({"error": text}, status=status)
        response.force_close()
        return response


def _json_parse_errors() -> None:
    # web.Server makes one RequestHandler per connection from this module
    # global; aiohttp has no setting for the class (the daemon is the only
    # aiohttp server in its process).
    web_server.RequestHandler = _JsonParseErrors  # type: ignore[misc]


def make_app(runtime: Runtime, shutdown: asyncio.Event) -> web.Application:
    _json_parse_errors()
    app = web.Application(middlewares=[errors], client_max_size=MAX_REQUEST_BYTES)
    app[RUNTIME] = runtime
    app[SHUTDOWN] = shutdown
    app.router.add_get("/v1/health", health)
    app.router.add_post("/v1/jobs", submit)
    app.router.add_post("/v1/jobs:batch", submit_batch)
    app.router.add_get("/v1/jobs", list_jobs)
    app.router.add_get("/v1/jobs/{id}", show_job)
    app.router.add_post("/v1/jobs/{id}/cancel", cancel)
    app.router.add_post("/v1/jobs/{id}/retry", retry)
    app.router.add_post("/v1/jobs/{id}/priority", set_priority)
    app.router.add_get("/v1/jobs/{id}/logs", logs)
    app.router.add_get("/v1/jobs/{id}/metrics", metrics)
    app.router.add_get("/v1/jobs/{id}/processes", job_processes)
    app.router.add_get("/v1/nodes", nodes)
    app.router.add_post("/v1/nodes:check", check_nodes)
    app.router.add_post("/v1/nodes/{name}/drain", drain_node)
    app.router.add_post("/v1/nodes/{name}/undrain", undrain_node)
    app.router.add_get("/v1/events", events)
    app.router.add_post("/v1/shutdown", shutdown_route)
    return app


def _rt(request: web.Request) -> Runtime:
    return request.app[RUNTIME]


def _job_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    job_id = _parse_int(raw)
    if job_id is None:
        raise BadRequest(f"job id {raw!r} is not a number; see `llmconsole jobs`")
    if not 1 <= job_id <= MAX_ID:
        raise NotFound(f"no job {raw}: job ids run from 1 to {MAX_ID}; see `llmconsole jobs`")
    return job_id


def _parse_int(raw: str) -> int | None:
    """ASCII digits with an optional minus (int() would also take spaces,
    underscores and other scripts' digits), else None. Past 2**63 the value
    is only known to be out of every range, so MAX_ID + 1 (or its negative)
    stands for it, and a million digits cost no more than twenty."""
    negative = raw.startswith("-")
    digits = raw[1:] if negative else raw
    if not (digits and digits.isascii() and digits.isdigit()):
        return None
    value = int(digits) if len(digits.lstrip("0")) <= 19 else MAX_ID + 1
    return -value if negative else value


def _int_param(request: web.Request, name: str, low: int, high: int = MAX_ID) -> int | None:
    """Query parameter `name` as a whole number from `low` to `high`; None
    when absent or empty."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    value = _parse_int(raw)
    if value is None or not low <= value <= high:
        raise BadRequest(f"{name}={raw!r}: expected a whole number from {low} to {high}")
    return value


async def health(request: web.Request) -> web.Response:
    rt = _rt(request)
    me = caller(request)
    return web.json_response({
        "version": __version__, "pid": os.getpid(), "uid": rt.engine_uid,
        "cluster": rt.cluster.name, "uptime_s": time.time() - rt.started_at,
        "you": {"uid": me.uid, "name": me.name},
    })


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_REQUEST_BYTES:
        raise TooLarge(_too_large(request.content_length))
    raw = await request.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadRequest(f"request body is not UTF-8 (byte {err.start}); send UTF-8 JSON") \
            from None
    try:
        body = json.loads(text)
    except ValueError as err:
        raise BadRequest(f"request body is not JSON ({err}); send a JSON object") from None
    except RecursionError:
        raise BadRequest("request body is nested too deeply; send a flatter JSON object") \
            from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


async def submit(request: web.Request) -> web.Response:
    rt = _rt(request)
    body = await _body(request)
    spec: JobSpec = spec_from_payload(body.get("spec"))
    job = rt.submit(spec, caller(request), _after(body.get("after")))
    return web.json_response(rt.job_view(job), status=201)


async def submit_batch(request: web.Request) -> web.Response:
    rt = _rt(request)
    items = (await _body(request)).get("jobs")
    if not isinstance(items, list) or not items:
        raise BadRequest("expected {\"jobs\": [{\"spec\": {...}, \"after\": [...]}, ...]}")
    parsed = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise BadRequest(f"jobs[{index}]: expected an object with a 'spec'")
        try:
            parsed.append((spec_from_payload(item.get("spec")),
                           _after(item.get("after"), index)))
        except BadRequest as err:
            raise BadRequest(f"jobs[{index}]: {err.message}") from None
    jobs = rt.submit_many(parsed, caller(request))
    return web.json_response(rt.job_views(jobs), status=201)


def _after(value: Any, index: int | None = None) -> list[int | BatchRef]:
    """Job ids; in a batch (`index` set) also {"batch": i} for an earlier item."""
    after = value or []
    expected = ("after: expected a list of job ids" if index is None else
                'after: expected a list of job ids and {"batch": i} (i < this item\'s index)')
    if not isinstance(after, list):
        raise BadRequest(expected)
    out: list[int | BatchRef] = []
    for a in after:
        if isinstance(a, int) and not isinstance(a, bool):
            if not 1 <= a <= MAX_ID:
                raise NotFound(f"after: no job {a}: job ids run from 1 to {MAX_ID}; "
                               f"see `llmconsole jobs`")
            out.append(a)
        elif (index is not None and isinstance(a, dict) and list(a) == ["batch"]
              and isinstance(a["batch"], int) and not isinstance(a["batch"], bool)
              and 0 <= a["batch"] < index):
            out.append(BatchRef(a["batch"]))
        else:
            raise BadRequest(expected)
    return out


async def list_jobs(request: web.Request) -> web.Response:
    rt = _rt(request)
    states = None
    if request.query.get("state"):
        try:
            states = {JobState(s) for s in request.query["state"].split(",") if s}
        except ValueError:
            known = ", ".join(s.value for s in JobState)
            raise BadRequest(f"state={request.query['state']!r}: expected some of {known}") \
                from None
    owner = _int_param(request, "owner", 0, 2**32 - 1)
    limit = _int_param(request, "limit", 1)
    jobs = rt.store.list_jobs(states=states, owner_uid=owner, limit=limit)
    me = caller(request)
    return web.json_response([_redacted(rt, me, v) for v in rt.job_views(jobs)])


def _redacted(rt: Runtime, me: Caller, view: dict[str, Any]) -> dict[str, Any]:
    """A job's view as `me` may see it: without the loss and tokens/s of its
    progress (metrics) unless `me` may read its logs; step and total stay,
    as the queue's progress."""
    progress = view.get("progress")
    if progress is None or may_read(rt, me, view.get("owner_uid")):
        return view
    return {**view, "progress": {**progress, "loss": None, "tokens_per_s": None}}


async def show_job(request: web.Request) -> web.Response:
    rt = _rt(request)
    job = rt.job(_job_id(request))
    me = caller(request)
    view = _redacted(rt, me, rt.job_view(job))
    view["spec"] = job.spec.to_dict()
    view["spec"]["env"] = sorted(view["spec"]["env"])  # names only: values may be secrets
    if not may_read(rt, me, job.owner_uid):
        view["spec"]["env"] = []
        view["private"] = _private(job, "logs, metrics, processes and env names")
    view["attempts"] = [attempt_view(a) for a in rt.store.attempts(job.id)]
    view["history"] = [
        {"attempt": e.attempt, "time": e.time,
         "from": e.from_state.value if e.from_state else None,
         "to": e.to_state.value, "cause": e.cause, "actor": e.actor}
        for e in rt.store.history(job.id)
    ]
    return web.json_response(view)


async def cancel(request: web.Request) -> web.Response:
    rt = _rt(request)
    return web.json_response(rt.job_view(rt.cancel(_job_id(request), caller(request))))


async def retry(request: web.Request) -> web.Response:
    rt = _rt(request)
    return web.json_response(rt.job_view(rt.retry(_job_id(request), caller(request))))


async def set_priority(request: web.Request) -> web.Response:
    rt = _rt(request)
    body = await _body(request)
    if set(body) != {"priority"}:
        raise BadRequest('send {"priority": N}, N a whole number (higher starts first)')
    job = rt.set_priority(_job_id(request), body["priority"], caller(request))
    return web.json_response(rt.job_view(job))


async def metrics(request: web.Request) -> web.Response:
    rt, job = _readable_job(request, "metrics")
    names = request.query.get("name")
    points = rt.store.metrics(
        job.id,
        attempt=_attempt(request, job.id, job.attempt),
        names=set(names.split(",")) if names else None,
        since_step=_int_param(request, "since_step", -MAX_ID),
        limit=_int_param(request, "limit", 1),
    )
    return web.json_response([
        {"attempt": p.attempt, "step": p.step, "name": p.name, "value": p.value, "time": p.time}
        for p in points
    ])


async def nodes(request: web.Request) -> web.Response:
    return web.json_response(_rt(request).node_views())


async def job_processes(request: web.Request) -> web.Response:
    rt, job = _readable_job(request, "processes")
    return web.json_response(await rt.processes(job.id))


async def check_nodes(request: web.Request) -> web.Response:
    body = await _body(request)
    node = body.get("node")
    if set(body) - {"node"} or (node is not None and not isinstance(node, str)):
        raise BadRequest('send {"node": "NAME"} to check one node, or {} for all')
    return web.json_response(await _rt(request).check(node))


async def drain_node(request: web.Request) -> web.Response:
    body = await _body(request)
    if set(body) - {"reason"}:
        raise BadRequest('send {"reason": "why"} (or {}) to drain a node')
    return web.json_response(_rt(request).drain(request.match_info["name"],
                                                body.get("reason", ""), caller(request)))


async def undrain_node(request: web.Request) -> web.Response:
    return web.json_response(_rt(request).undrain(request.match_info["name"], caller(request)))


def _attempt(request: web.Request, job_id: int, attempts: int) -> int | None:
    """The `attempt` query parameter: one of the job's attempts, or None."""
    raw = request.query.get("attempt")
    if raw is None or raw == "":
        return None
    number = _parse_int(raw)
    if number is None or not 1 <= number <= attempts:
        raise BadRequest(f"attempt={raw!r}: job {job_id} has attempts 1 to {attempts}")
    return number


async def logs(request: web.Request) -> web.StreamResponse:
    """The attempt's output as the bytes the engine's copy holds (never
    decoded, so a line that is not UTF-8 arrives as it was written)."""
    rt, job = _readable_job(request, "logs")
    number = _attempt(request, job.id, job.attempt) or job.attempt
    follow = request.query.get("follow") in ("1", "true", "yes")
    tail = _int_param(request, "tail", 0)
    path = rt.log_path(job.id, number)
    response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    await response.prepare(request)
    sub = rt.hub.subscribe(
        lambda e: e.get("job") == job.id and e.get("attempt") == number
        and e.get("type") in ("log", "attempt-ended"),
        size=1000,
    ) if follow else None

    def moved(position: int, rewrites: int | None) -> tuple[int, int]:
        """Where `position` is now in the copy (the log cap rewrites it)."""
        return rt.ingest.follow(job.id, number, position, rewrites)

    try:
        position, rewrites = 0, None
        if tail is not None and path.exists():
            lines = path.read_bytes().splitlines(keepends=True)[-tail:] if tail > 0 else []
            position, rewrites = moved(path.stat().st_size, None)
            await response.write(b"".join(lines))
        while True:
            position, rewrites = await _copy_from(path, position, response, rewrites, moved)
            if sub is None:
                break
            current = rt.store.get_attempt(job.id, number)
            if current.state.is_terminal() and attempt_key(job.id, number) not in rt.running:
                position, rewrites = await _copy_from(path, position, response, rewrites,
                                                      moved)
                break
            if request.app[SHUTDOWN].is_set():
                break
            await _next_event(sub, request.app[SHUTDOWN], 1.0)
        await response.write_eof()
    except ConnectionError:  # the client left (a closed screen, ^C on `logs -f`): normal
        log.debug("log stream of job %d attempt %d: client left", job.id, number)
    finally:
        if sub is not None:
            sub.close()
    return response


async def _next_event(sub: Any, shutdown: asyncio.Event, timeout: float
                      ) -> dict[str, Any] | None:
    """The subscription's next event; None after `timeout` seconds or as soon
    as the engine is shutting down (so open streams never hold a shutdown
    up: aiohttp would wait a minute for their handlers)."""
    getter = asyncio.ensure_future(sub.get())
    stopper = asyncio.ensure_future(shutdown.wait())
    try:
        await asyncio.wait({getter, stopper}, timeout=timeout,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (getter, stopper):
            if not task.done():
                task.cancel()
    if getter.done() and not getter.cancelled():
        event: dict[str, Any] = getter.result()
        return event
    return None


async def _copy_from(path: Any, position: int, response: web.StreamResponse,
                     rewrites: int | None = None,
                     follow: Callable[[int, int | None], tuple[int, int]] | None = None
                     ) -> tuple[int, int | None]:
    """Send the copy's whole lines from `position`; -> (position, rewrites)
    to go on from. `follow` (engine.ingest's) moves the position into the
    copy as the log cap has rewritten it since; no await comes between it
    and the read, so it speaks of the file read."""
    if follow is not None:
        position, rewrites = follow(position, rewrites)
    try:
        with open(path, "rb") as f:
            f.seek(position)
            data = f.read()
    except FileNotFoundError:
        return position, rewrites
    if data:
        # send whole lines only; a partial last line waits for its end
        cut = data.rfind(b"\n") + 1
        if cut:
            await response.write(data[:cut])
            return position + cut, rewrites
    return position, rewrites


async def events(request: web.Request) -> web.StreamResponse:
    rt = _rt(request)
    wanted = set(filter(None, request.query.get("types", "").split(",")))
    sub = rt.hub.subscribe((lambda e: e.get("type") in wanted) if wanted else (lambda e: True))
    me = caller(request)
    readable = _event_filter(rt, me)
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    try:
        await response.write(json.dumps({"type": "hello", "time": time.time()}).encode() + b"\n")
        shutdown = request.app[SHUTDOWN]
        while not shutdown.is_set():
            event = await _next_event(sub, shutdown, 15.0)
            if event is None:
                event = {"type": "keepalive", "time": time.time()}
            elif not readable(event):
                continue
            elif event.get("type") == "job" and isinstance(event.get("job"), dict):
                event = {**event, "job": _redacted(rt, me, event["job"])}
            if not shutdown.is_set():
                await response.write(json.dumps(event).encode() + b"\n")
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        sub.close()
    return response


def _event_filter(rt: Runtime, me: Caller) -> Callable[[dict[str, Any]], bool]:
    """Whether `me` may see an event: log and metric events only of the jobs
    whose logs `me` may read (each job's owner looked up once per stream)."""
    owners: dict[int, int | None] = {}

    def readable(event: dict[str, Any]) -> bool:
        job_id = event.get("job")
        if event.get("type") not in ("log", "metric") or not isinstance(job_id, int):
            return True
        if job_id not in owners:
            try:
                owners[job_id] = rt.job(job_id).owner_uid
            except NotFound:
                owners[job_id] = None
        return may_read(rt, me, owners[job_id])

    return readable


async def shutdown_route(request: web.Request) -> web.Response:
    rt = _rt(request)
    me = caller(request)
    if me.uid != rt.engine_uid and me.name not in rt.cluster.admins:
        raise Forbidden(f"only the engine's owner ({rt.engine_uid}) or an admin may stop it")
    request.app[SHUTDOWN].set()
    return web.json_response({"stopping": True})
