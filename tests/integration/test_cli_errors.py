"""The CLI turns every refusal into one line on stderr naming the problem
and the fix, with a non-zero exit, and the daemon stays up: huge job ids,
bad numbers, a profile over the engine's request limit, someone else's
engine home (a second uid through setpriv), a socket path too long for a
Unix socket, a failed start. What it prints of user-controlled strings is
escaped, and long job names end with an ellipsis."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.engine_handle import REPO, EngineHandle
from engine.errors import MAX_REQUEST_BYTES
from tests.integration.test_engine import alive, command_profile

HUGE = "999999999999999999999"
NOBODY = 65534


def one_line(proc: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The single stderr line of a refused command (asserted so)."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("llmconsole: error: "), lines
    return lines[0]


def test_huge_ids_and_bad_numbers_get_one_line_and_the_engine_stays_up(
        engine: EngineHandle) -> None:
    engine.write_profile("ok", command_profile([sys.executable, "-c", "print('hi')"]))
    job_id = engine.submit("ok")
    engine.wait_state(job_id, {"succeeded"})
    for args in (["show", HUGE], ["cancel", HUGE], ["retry", HUGE], ["priority", HUGE, "3"],
                 ["logs", HUGE], ["metrics", HUGE]):
        line = one_line(engine.cli(*args, check=False))
        assert f"no job {HUGE}" in line and "`llmconsole jobs`" in line, (args, line)
    line = one_line(engine.cli("submit", "ok", "--after", HUGE, check=False))
    assert f"after: no job {HUGE}" in line
    for args, field in ((["jobs", "--limit", "-1"], "limit="), (["jobs", "--limit", "0"], "limit="),
                        (["logs", str(job_id), "--tail", "-1"], "tail="),
                        (["logs", str(job_id), "--attempt", "0"], "attempt="),
                        (["metrics", str(job_id), "--attempt", HUGE], "attempt=")):
        assert field in one_line(engine.cli(*args, check=False)), args
    assert engine.json("engine", "status")["running"] is True
    assert [j["id"] for j in engine.json("jobs", "--all")] == [job_id]


def test_a_profile_over_the_request_limit_names_its_file_and_the_fix(
        engine: EngineHandle) -> None:
    # within every argv rule (each argument under 128 KiB, all under half of
    # ARG_MAX), but JSON writes each control character as six bytes: 4.3 MB
    arg = '"' + "\\u0001" * 120_000 + '"'
    path = engine.write_profile(
        "bulky", f'kind = "command"\ncommand = ["true", {", ".join([arg] * 6)}]\n')
    assert path.stat().st_size > MAX_REQUEST_BYTES
    line = one_line(engine.cli("submit", "bulky", check=False))
    assert f"profile bulky ({path})" in line
    assert str(MAX_REQUEST_BYTES) in line and "spec.argv[" in line
    assert "make the profile smaller" in line and "files" in line
    assert engine.json("jobs", "--all") == []


@pytest.fixture
def nobody_lib() -> Iterator[Path]:
    """The engine package, copied where user nobody can read it (the
    checkout may live in a private home)."""
    root = Path(tempfile.mkdtemp(prefix="llc-lib-", dir="/tmp"))
    shutil.copytree(REPO / "engine", root / "engine",
                    ignore=shutil.ignore_patterns("__pycache__", "workloads"))
    for folder, _dirs, files in os.walk(root):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def cli_as_nobody(lib: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`llmconsole ARGS` run by uid 65534 (the system's Python, which the
    commands used here need nothing beyond) with LLMCONSOLE_HOME=home."""
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    env = {"PATH": "/usr/bin:/bin", "LLMCONSOLE_HOME": str(home), "PYTHONPATH": str(lib),
           "HOME": "/nonexistent"}
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         python, "-s", "-m", "engine", *args],
        env=env, capture_output=True, text=True, timeout=60, cwd="/")


def test_another_users_engine_home_gets_one_line_and_is_never_started(
        engine: EngineHandle, nobody_lib: Path) -> None:
    engine.cli("engine", "start")
    pid = (engine.home / "engine.pid").read_text()
    assert engine.home.stat().st_mode & 0o777 == 0o700 and engine.home.stat().st_uid == 0

    status = cli_as_nobody(nobody_lib, engine.home, "engine", "status")
    assert status.returncode == 4, status.stdout + status.stderr
    assert status.stdout.startswith("engine unreachable: ") and status.stderr == ""
    for words in (str(engine.home / "engine.sock"), "permission denied", "belongs to root",
                  "--socket-group G --socket-mode 660", "LLMCONSOLE_HOME"):
        assert words in status.stdout, words
    for args in (["jobs"], ["show", "1"], ["logs", "1"], ["engine", "start"],
                 ["engine", "stop"], ["--json"]):
        line = one_line(cli_as_nobody(nobody_lib, engine.home, *args))
        assert "permission denied" in line and "belongs to root" in line, (args, line)
    assert (engine.home / "engine.pid").read_text() == pid  # the same engine, still up
    assert engine.json("engine", "status")["running"] is True

    engine.home.chmod(0o755)  # the folder open, the socket still 0600
    status = cli_as_nobody(nobody_lib, engine.home, "engine", "status", "--json")
    assert status.returncode == 4
    assert '"running": null' in status.stdout and "(it belongs to root)" in status.stdout

    engine.cli("engine", "stop")
    deadline = time.monotonic() + 20
    while alive(int(pid)):  # its files are gone once it has exited
        assert time.monotonic() < deadline, "the engine did not exit"
        time.sleep(0.05)
    engine.home.chmod(0o700)
    before = sorted(p.name for p in engine.home.iterdir())
    line = one_line(cli_as_nobody(nobody_lib, engine.home, "jobs"))
    assert "permission denied" in line
    assert sorted(p.name for p in engine.home.iterdir()) == before  # nothing started there

    own = Path(tempfile.mkdtemp(prefix="llc-own-", dir="/tmp")) / "home"
    os.chown(own.parent, NOBODY, NOBODY)
    try:  # no engine at all, in a home nobody may use: a different answer
        status = cli_as_nobody(nobody_lib, own, "engine", "status")
        assert status.returncode == 3 and status.stdout.startswith("no engine running")
    finally:
        shutil.rmtree(own.parent, ignore_errors=True)


def test_a_socket_path_too_long_gets_one_line_in_the_client_and_the_daemon(
        engine: EngineHandle) -> None:
    home = engine.home / ("d" * 100)
    engine.env["LLMCONSOLE_HOME"] = str(home)
    sock = home / "engine.sock"
    size = len(str(sock).encode())
    for args in (["jobs"], ["engine", "start"], ["engine", "serve"], ["engine", "stop"]):
        line = one_line(engine.cli(*args, check=False))
        assert f"{sock} is {size} bytes, over the 107-byte limit" in line, (args, line)
        assert "shorter LLMCONSOLE_HOME or LLMCONSOLE_SOCKET" in line
    status = engine.cli("engine", "status", check=False)
    assert status.returncode == 4 and "107-byte limit" in status.stdout
    assert not home.exists()  # nothing was started, nothing created

    engine.env["LLMCONSOLE_HOME"] = str(engine.home)
    engine.env["LLMCONSOLE_SOCKET"] = str(engine.home / ("s" * 100))
    line = one_line(engine.cli("engine", "serve", check=False))
    assert "107-byte limit" in line and "LLMCONSOLE_SOCKET" in line


def test_a_failed_start_shows_only_its_own_failure(engine: EngineHandle) -> None:
    first = one_line(engine.cli("engine", "start", "--cluster", "no-such-first", check=False))
    assert "exited at start" in first and "no-such-first" in first
    second = one_line(engine.cli("engine", "start", "--cluster", "no-such-second",
                                 check=False))
    assert "no-such-second" in second
    assert "no-such-first" not in second  # engine.log still holds it; this start did not
    assert "no-such-first" in (engine.home / "engine.log").read_text()


def test_printed_names_are_escaped_and_long_names_end_with_an_ellipsis(
        engine: EngineHandle) -> None:
    engine.write_profile("es\x1b[31mc\nape", command_profile(["true"]))
    engine.write_profile("notes", command_profile(["true"]) +
                         'description = "two\\nlines\\tand a tab"\n')
    engine.write_profile("ghost", command_profile(["/no/such/\u001b[2Jprog"]))
    name = "n" * 39 + "ABCDEFGH"
    engine.write_profile("long", command_profile(["true"], name=f'"{name}"'))

    listed = engine.cli("profiles", "list").stdout
    assert "\x1b" not in listed
    assert "es\\x1b[31mc\\nape" in listed
    assert "two\\nlines\\tand a tab" in listed
    rows = listed.splitlines()
    assert sum(row.startswith("es\\x1b") for row in rows) == 1  # one profile, one line
    validate = engine.cli("profiles", "validate", check=False)
    assert "\x1b" not in validate.stderr and "es\\x1b[31mc\\nape.toml" in validate.stderr

    ghost = engine.submit("ghost")
    long = engine.submit("long")
    engine.wait_state(ghost, {"failed"})
    engine.wait_state(long, {"succeeded"})
    jobs = engine.cli("jobs", "--all").stdout
    assert "\x1b" not in jobs and "/no/such/\\x1b[2Jprog" in jobs
    assert "n" * 39 + "\u2026" in jobs and "ABC" not in jobs
    shown = engine.cli("show", str(ghost)).stdout
    assert "\x1b" not in shown and "\\x1b[2Jprog" in shown


def test_logs_print_the_bytes_the_job_wrote(engine: EngineHandle) -> None:
    written = b"a\xff\n caf\xc3\xa9 \xfe\xfd\n"
    script = f"import sys; sys.stdout.buffer.write({written!r})"
    engine.write_profile("bytes", command_profile([sys.executable, "-c", script]))
    job_id = engine.submit("bytes")
    engine.wait_state(job_id, {"succeeded"})
    assert (engine.home / "runs" / f"{job_id}.1" / "output.log").read_bytes() == written
    for args in (["logs", str(job_id)], ["logs", str(job_id), "-f"]):
        out = subprocess.run([sys.executable, "-m", "engine", *args], env=engine.env,
                             capture_output=True, timeout=60, check=True).stdout
        assert out == written, args
