"""The API refuses what it cannot serve with a 4xx and a JSON one-line error
naming the field, never a 500, and stays up: ids and query integers out of
range, bodies that are not UTF-8, not JSON or too large, unknown routes and
methods. A client that leaves a followed log is normal (nothing above debug
in engine.log), and logs travel as the bytes of the engine's copy."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.engine_handle import EngineHandle, new_engine
from engine.client import EngineClient, UnixHTTPConnection
from engine.errors import MAX_REQUEST_BYTES
from tests.integration.test_engine import command_profile

HUGE = "999999999999999999999"  # past SQLite's integers (2**63 - 1)


@pytest.fixture(scope="module")
def api() -> Iterator[EngineHandle]:
    """One daemon for the refusals below (none of them changes its state),
    with one succeeded job (id 1, one attempt)."""
    handle = new_engine()
    try:
        handle.write_profile("ok", command_profile([sys.executable, "-c", "print('hi')"]))
        job_id = handle.submit("ok")
        assert job_id == 1
        handle.wait_state(job_id, {"succeeded"})
        yield handle
    finally:
        handle.close()
        shutil.rmtree(handle.home, ignore_errors=True)


def request(engine: EngineHandle, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = UnixHTTPConnection(engine.home / "engine.sock", timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def refusal(engine: EngineHandle, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, str]:
    """The status and the one-line error of a refused request."""
    status, got, data = request(engine, method, path, body, headers)
    assert got["Content-Type"].startswith("application/json"), (path, got, data[:200])
    error = json.loads(data)["error"]
    assert isinstance(error, str) and "\n" not in error and "Traceback" not in error
    return status, error


def assert_up(engine: EngineHandle) -> None:
    status, _headers, data = request(engine, "GET", "/v1/health")
    assert status == 200 and json.loads(data)["pid"] > 0


@pytest.mark.parametrize("method,path", [
    ("GET", f"/v1/jobs/{HUGE}"), ("POST", f"/v1/jobs/{HUGE}/cancel"),
    ("POST", f"/v1/jobs/{HUGE}/retry"), ("GET", f"/v1/jobs/{HUGE}/logs"),
    ("GET", f"/v1/jobs/{HUGE}/metrics"), ("GET", "/v1/jobs/0"), ("GET", "/v1/jobs/-1"),
    ("GET", "/v1/jobs/9223372036854775808"),
])
def test_ids_outside_sqlite_integers_are_404(api: EngineHandle, method: str, path: str
                                             ) -> None:
    status, error = refusal(api, method, path)
    assert status == 404
    assert "no job" in error and "1 to 9223372036854775807" in error
    assert_up(api)


def test_priority_and_after_with_huge_ids_are_refused(api: EngineHandle) -> None:
    body = json.dumps({"priority": 3}).encode()
    assert refusal(api, "POST", f"/v1/jobs/{HUGE}/priority", body)[0] == 404
    spec = EngineClient(api.home / "engine.sock").job(1)["spec"]
    spec["env"] = {}
    after = json.dumps({"spec": spec, "after": [int(HUGE)]}).encode()
    status, error = refusal(api, "POST", "/v1/jobs", after)
    assert status == 404 and error.startswith("after: no job")
    batch = json.dumps({"jobs": [{"spec": spec, "after": [int(HUGE)]}]}).encode()
    status, error = refusal(api, "POST", "/v1/jobs:batch", batch)
    assert status == 404 and "after: no job" in error
    assert EngineClient(api.home / "engine.sock").jobs(states=["queued", "held"]) == []


@pytest.mark.parametrize("query,field", [
    ("/v1/jobs?limit=-1", "limit"), ("/v1/jobs?limit=0", "limit"),
    (f"/v1/jobs?limit={HUGE}", "limit"), ("/v1/jobs?limit=1e3", "limit"),
    ("/v1/jobs?limit=%D9%A3", "limit"), (f"/v1/jobs?owner={HUGE}", "owner"),
    ("/v1/jobs?owner=-1", "owner"),
    ("/v1/jobs/1/logs?attempt=0", "attempt"), ("/v1/jobs/1/logs?attempt=-1", "attempt"),
    (f"/v1/jobs/1/logs?attempt={HUGE}", "attempt"), ("/v1/jobs/1/logs?attempt=2", "attempt"),
    ("/v1/jobs/1/logs?tail=-1", "tail"), (f"/v1/jobs/1/logs?tail={HUGE}", "tail"),
    ("/v1/jobs/1/metrics?attempt=0", "attempt"), (f"/v1/jobs/1/metrics?attempt={HUGE}", "attempt"),
    (f"/v1/jobs/1/metrics?since_step={HUGE}", "since_step"),
    ("/v1/jobs/1/metrics?since_step=x", "since_step"),
    ("/v1/jobs/1/metrics?limit=0", "limit"), (f"/v1/jobs/1/metrics?limit=-{HUGE}", "limit"),
])
def test_bad_query_integers_are_400_naming_the_parameter(api: EngineHandle, query: str,
                                                         field: str) -> None:
    status, error = refusal(api, "GET", query)
    assert status == 400
    assert error.startswith(f"{field}=")
    assert_up(api)


def test_good_query_integers_still_answer(api: EngineHandle) -> None:
    client = EngineClient(api.home / "engine.sock")
    assert [j["id"] for j in client.jobs(limit=1)] == [1]
    assert list(client.logs(1, attempt=1, tail=0)) == []
    assert list(client.logs(1, attempt=1, tail=5)) == ["hi"]
    assert client.metrics(1, attempt=1, since_step=-5) == []


def test_bodies_that_are_not_utf8_json_objects_are_400(api: EngineHandle) -> None:
    cases = {
        b"\xff\xfe{}": "not UTF-8",
        b"{\"spec\": ": "not JSON",
        b"[" * 100_000 + b"]" * 100_000: "nested too deeply",
        b"[1, 2]": "JSON object",
    }
    for body, words in cases.items():
        status, error = refusal(api, "POST", "/v1/jobs", body,
                                {"Content-Type": "application/json"})
        assert status == 400 and words in error, (body[:20], error)
    status, error = refusal(api, "POST", "/v1/jobs/1/priority", b"\xc3(")
    assert status == 400 and "not UTF-8" in error
    assert_up(api)


def test_a_body_over_the_limit_is_413_naming_the_limit(api: EngineHandle) -> None:
    big = b"a" * (MAX_REQUEST_BYTES + 1000)
    status, error = refusal(api, "POST", "/v1/jobs", big)
    assert status == 413
    assert f"{len(big)} bytes" in error and str(MAX_REQUEST_BYTES) in error
    assert "files" in error  # the fix: put the data in files
    chunks = iter([big[:MAX_REQUEST_BYTES // 2], big[MAX_REQUEST_BYTES // 2:]])
    conn = UnixHTTPConnection(api.home / "engine.sock", timeout=30)
    try:  # no Content-Length: aiohttp's own refusal, answered as JSON too
        conn.request("POST", "/v1/jobs:batch", body=chunks, encode_chunked=True)
        response = conn.getresponse()
        assert response.status == 413
        assert str(MAX_REQUEST_BYTES) in json.loads(response.read())["error"]
    except (BrokenPipeError, ConnectionResetError):
        pass  # the engine may hang up before the whole body is sent; it answered anyway
    finally:
        conn.close()
    assert_up(api)


def test_unknown_routes_and_wrong_methods_answer_json(api: EngineHandle) -> None:
    status, error = refusal(api, "GET", "/v1/nosuch")
    assert status == 404 and "GET /v1/nosuch" in error
    status, error = refusal(api, "GET", "/favicon.ico")
    assert status == 404
    status, headers, data = request(api, "POST", "/v1/health")
    assert status == 405 and headers["Allow"] == "GET,HEAD"
    assert "use GET" in json.loads(data)["error"]
    status, error = refusal(api, "DELETE", "/v1/jobs/1")
    assert status == 405 and "DELETE" in error
    # the streaming routes still stream
    client = EngineClient(api.home / "engine.sock")
    assert next(iter(client.events()))["type"] == "hello"
    assert list(client.logs(1)) == ["hi"]


def test_logs_are_the_bytes_of_the_engine_copy(api: EngineHandle) -> None:
    """The API's side alone (test_cli_errors runs a job through the whole
    path): whatever the engine's copy holds, the API and `llmconsole logs`
    return its bytes unchanged; only text iteration shows U+FFFD."""
    copy = api.home / "logs" / "1.1" / "output.log"
    original = copy.read_bytes()
    exact = b"hi\n\xff\xfe raw\n caf\xc3\xa9 \x1b[0m\n"
    copy.write_bytes(exact)
    try:
        stream = EngineClient(api.home / "engine.sock").logs(1)
        assert b"".join(stream.raw()) == exact
        out = _cli_bytes(api, "logs", "1")
        assert out == exact
        assert _cli_bytes(api, "logs", "1", "--tail", "1") == b" caf\xc3\xa9 \x1b[0m\n"
        assert list(EngineClient(api.home / "engine.sock").logs(1))[1] == "\ufffd\ufffd raw"
    finally:
        copy.write_bytes(original)


def _cli_bytes(engine: EngineHandle, *args: str) -> bytes:
    proc = subprocess.run([sys.executable, "-m", "engine", *args], env=engine.env,
                          capture_output=True, timeout=60, cwd=engine.home, check=True)
    return proc.stdout


def test_a_client_leaving_a_followed_log_is_not_an_error(engine: EngineHandle,
                                                          tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    script = (f"import os, time\nprint('first', flush=True)\n"
              f"while not os.path.exists({str(gate)!r}): time.sleep(0.05)\n"
              "for i in range(50): print('line', i, flush=True)")
    engine.write_profile("gated", command_profile([sys.executable, "-c", script]))
    job_id = engine.submit("gated")
    stream = EngineClient(engine.home / "engine.sock").logs(job_id, follow=True)
    first = threading.Event()

    def read() -> None:
        for line in stream:
            if line == "first":
                first.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert first.wait(30)
    stream.close()  # the client leaves while the job still writes
    reader.join(10)
    gate.write_text("go")
    engine.wait_state(job_id, {"succeeded"})
    engine.cli("engine", "stop")  # waits for the log handler to end: the log is complete
    log = (engine.home / "engine.log").read_text()
    assert "ERROR" not in log and "Traceback" not in log, log


def test_engine_log_of_a_normal_session_has_no_errors(api: EngineHandle) -> None:
    """Every refusal above is the caller's error, not the engine's."""
    log = (api.home / "engine.log").read_text()
    assert "ERROR" not in log and "Traceback" not in log, log[-2000:]
