"""The API under hostile input, against a real daemon: a hypothesis client
sends random methods, paths, query strings and bodies (JSON of random shape,
job specs with one field mutated, bytes that are not UTF-8) to every route of
engine/api/server.py; every answer is under 500, JSON (a log is text), an
error one line, and the daemon stays up. A body over the limit is refused
with 413 before it is sent. A name is refused through the API exactly when a
profile refuses it (one rule set, engine.spec_rules), and shell
metacharacters, newlines, long values and leading dashes that are allowed
reach the job's argv and environment verbatim."""

from __future__ import annotations

import json
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chaos import hostile
from chaos.engine_handle import EngineHandle, new_engine
from engine.errors import MAX_REQUEST_BYTES, BadRequest
from engine.profiles import ProfileError, load_job_profile
from engine.spec_check import spec_from_payload
from tests.fuzz.test_profile_fuzz import toml_value

EVIL = "; rm -rf ~ $(reboot) \"'`id`|&*>x<"


@pytest.fixture(scope="module")
def api() -> Iterator[EngineHandle]:
    handle = new_engine()
    try:
        handle.serve()
        job = submit(handle, {**hostile.VALID_SPEC, "name": "first"})
        assert job["id"] == 1
        wait_ended(handle, 1)
        yield handle
    finally:
        handle.close()
        shutil.rmtree(handle.home, ignore_errors=True)


def call(engine: EngineHandle, method: str, path: str, body: Any = None
         ) -> tuple[int, Any]:
    payload = None if body is None else json.dumps(body).encode()
    status, headers, data = hostile.send(engine.home / "engine.sock", method, path, payload,
                                         {"Content-Type": "application/json"})
    assert hostile.answer_problem(method, path, status, headers, data) is None
    return status, json.loads(data)


def submit(engine: EngineHandle, spec: dict[str, Any]) -> dict[str, Any]:
    status, job = call(engine, "POST", "/v1/jobs", {"spec": spec})
    assert status == 201, job
    return dict(job)


def wait_ended(engine: EngineHandle, job_id: int, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        _status, job = call(engine, "GET", f"/v1/jobs/{job_id}")
        if job["state"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return dict(job)
        time.sleep(0.1)


def assert_up(engine: EngineHandle) -> None:
    status, health = call(engine, "GET", "/v1/health")
    assert status == 200 and health["pid"] > 0


# --------------------------------------------------------------- random requests

def _json() -> st.SearchStrategy[Any]:
    leaves = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
              | st.text(max_size=20))
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                        max_leaves=10)


part = st.text(max_size=10) | st.sampled_from(hostile.ODD_TEXT)
bodies = st.one_of(
    st.none(),
    st.binary(max_size=64),
    _json().map(lambda v: json.dumps(v).encode()),
    st.randoms(use_true_random=False).map(
        lambda rng: json.dumps({"spec": hostile.mutated_spec(rng)}).encode()),
    st.randoms(use_true_random=False).map(
        lambda rng: json.dumps({"jobs": [{"spec": hostile.mutated_spec(rng)}],
                                "after": hostile.random_json(rng)}).encode()),
    st.sampled_from([b"[" * 100_000, b'{"spec": {"name": "x"', b"\xff\xfe", b"null",
                     b'{"priority": 1e999}', b'{"node": "local"}']),
)


@st.composite
def requests(draw: st.DrawFn) -> hostile.Request:
    method, path = draw(st.sampled_from(hostile.ROUTES))
    if (method, path) in hostile.WRONG_METHOD_ONLY:
        method = draw(st.sampled_from(["PUT", "DELETE", "PATCH", "OPTIONS",
                                       "POST" if method == "GET" else "GET"]))
    elif draw(st.booleans()) and draw(st.booleans()):
        method = draw(st.sampled_from(hostile.METHODS))
    job = draw(st.sampled_from(["1", "2", "0", "-1", "99999", "9" * 30]) | part)
    path = path.replace("{id}", hostile._quote(job) or "1")
    path = path.replace("{name}", "fuzz-" + (hostile._quote(draw(part)) or "x"))
    if path.startswith("/v1/events") and method in ("GET", "HEAD"):
        method = "PUT"
    query = draw(st.lists(st.tuples(st.sampled_from(hostile.QUERY_KEYS), part), max_size=3))
    if query:
        path += "?" + "&".join(f"{k}={hostile._quote(v)}" for k, v in query
                               if not (k == "follow" and method in ("GET", "HEAD")))
    return method, path, draw(bodies), {"Content-Type": draw(
        st.sampled_from(["application/json", "text/plain", ""]))}


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(request=requests())
def test_random_requests_get_json_answers_under_500(api: EngineHandle,
                                                    request: hostile.Request) -> None:
    method, path, body, headers = request
    status, got, data = hostile.send(api.home / "engine.sock", method, path, body, headers)
    assert hostile.answer_problem(method, path, status, got, data) is None
    assert status < 500


def test_the_daemon_survives_the_fuzz_and_refuses_oversized_bodies_early(
        api: EngineHandle) -> None:
    # after the random requests above (same module, same daemon)
    assert_up(api)
    started = time.monotonic()
    status, doc = hostile.oversized(api.home / "engine.sock")  # 64 MiB announced, 9 B sent
    assert status == 413 and time.monotonic() - started < 10
    assert str(MAX_REQUEST_BYTES) in doc["error"] and "send less" in doc["error"]
    # a body that is really there and over the limit: 413 too, nothing queued
    before = call(api, "GET", "/v1/jobs")[1]
    big = json.dumps({"spec": {**hostile.VALID_SPEC, "argv": ["/bin/true",
                                                           "x" * MAX_REQUEST_BYTES]}})
    status, _got, data = hostile.send(api.home / "engine.sock", "POST", "/v1/jobs",
                                      big.encode(), {"Content-Type": "application/json"})
    assert status == 413 and "4 MiB" in json.loads(data)["error"]
    assert len(call(api, "GET", "/v1/jobs")[1]) == len(before)
    # chunked, so no Content-Length to refuse early: aiohttp's client_max_size stops it
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(api.home / "engine.sock"))
        sock.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n" % 65536 + b" " * 65536 + b"\r\n"
        for _ in range(MAX_REQUEST_BYTES // 65536 + 2):
            sock.sendall(chunk)
        sock.sendall(b"0\r\n\r\n")
        status, _got, data = hostile.parse_response(hostile.read_answer(sock))
    assert status == 413 and "over the engine's limit" in json.loads(data)["error"]
    assert len(call(api, "GET", "/v1/jobs")[1]) == len(before)
    assert_up(api)


# --------------------------------------------------------------- one rule set

NAMES = ["ok", "-rf", "--help", "-", "/etc/passwd", "a/b", "..", "~", EVIL, "a b", "é漢🙂",
         "x" * 128, "x" * 129, "", " ", "\t", "\u200b", "\ufeff", "a\nb", "a\rb", "a\x00b",
         "a\x1bb", "a\x7fb", "a\u0085b", "a\u2028b", "\udcff", "a\udcffb"]


def profile_verdict(folder: Path, spec: dict[str, Any]) -> str | None:
    """The problem a profile has with the fields of `spec`, or None."""
    lines = ['kind = "command"', f"name = {toml_value(spec['name'])}",
             f"command = {toml_value(spec['argv'])}",
             f"launcher = {toml_value(spec.get('launcher', 'local'))}"]
    path = folder / "job.toml"
    path.write_bytes(("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"))
    try:
        load_job_profile(str(path))
    except ProfileError as err:
        return str(err)
    return None


def api_verdict(spec: dict[str, Any]) -> str | None:
    try:
        spec_from_payload(spec)
    except BadRequest as err:
        return err.message
    return None


def test_the_api_refuses_the_names_a_profile_refuses(api: EngineHandle) -> None:
    folder = Path(tempfile.mkdtemp(prefix="llc-names-"))
    try:
        refused = accepted = 0
        for name in NAMES:
            spec = {**hostile.VALID_SPEC, "name": name}
            by_profile = profile_verdict(folder, spec)
            body = json.dumps({"spec": spec}, ensure_ascii=True).encode()  # \udcff as JSON says
            status, got, data = hostile.send(api.home / "engine.sock", "POST", "/v1/jobs", body,
                                              {"Content-Type": "application/json"})
            assert hostile.answer_problem("POST", "/v1/jobs", status, got, data) is None
            answer = json.loads(data)
            if by_profile is None:
                assert status == 201, (name, answer)
                assert answer["name"] == name  # verbatim
                accepted += 1
            else:
                assert status == 400, (name, by_profile, answer)
                assert answer["error"].startswith("spec.name: ")
                # the same problem in the same words (the profile's line adds path and
                # field), but for a byte that is not UTF-8: the file is, not the name
                if "not UTF-8" not in by_profile:
                    assert answer["error"].removeprefix("spec.name: ") in by_profile, (
                        answer, by_profile)
                refused += 1
        assert refused >= 15 and accepted >= 10
        # and the rules a profile adds to a command: a program, a local launcher
        for spec in ({**hostile.VALID_SPEC, "argv": [""]},
                     {**hostile.VALID_SPEC, "launcher": "horovodrun"},
                     {**hostile.VALID_SPEC, "launcher": "torchrun"}):
            by_profile = profile_verdict(folder, spec)
            status, answer = call(api, "POST", "/v1/jobs", {"spec": spec})
            assert by_profile is not None and status == 400, (spec, answer)
            problem = answer["error"].split(": ", 1)[1].split(";")[0]
            assert problem in by_profile, (answer, by_profile)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@settings(max_examples=200, deadline=None)
@given(name=st.text(max_size=140) | st.sampled_from(NAMES),
       program=st.sampled_from(["/bin/true", "", "-x", EVIL]),
       launcher=st.sampled_from(["local", "horovodrun", "torchrun"]))
def test_profile_and_api_verdicts_agree(name: str, program: str, launcher: str) -> None:
    spec = {**hostile.VALID_SPEC, "name": name, "argv": [program], "launcher": launcher}
    folder = Path(tempfile.mkdtemp(prefix="llc-names-"))
    try:
        assert (profile_verdict(folder, spec) is None) == (api_verdict(spec) is None), spec
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------- verbatim

def test_shell_metacharacters_pass_through_the_api_verbatim(api: EngineHandle,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "argv.json"
    script = ("import json, os, sys; open(sys.argv[1], 'w').write(json.dumps("
              "[sys.argv[2:], os.environ['EVIL'], os.environ['LINES']]))")
    args = [EVIL, "$HOME", "`id`", "a b", "*", "-rf", "--help", "a\nb\tc", "é漢🙂",
            "\\x00", "'\"", "y" * 100_000]
    spec = {**hostile.VALID_SPEC, "name": EVIL, "argv": [sys.executable, "-c", script,
                                                         str(out), *args],
            "env": {"EVIL": EVIL, "LINES": "one\ntwo"}}
    job = submit(api, spec)
    ended = wait_ended(api, job["id"])
    assert ended["state"] == "succeeded", ended
    assert ended["name"] == EVIL and ended["spec"]["argv"] == spec["argv"]
    assert ended["spec"]["env"] == ["EVIL", "LINES"]  # names only
    assert json.loads(out.read_text()) == [args, EVIL, "one\ntwo"]
