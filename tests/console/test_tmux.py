"""The installed `llmconsole` command in a real terminal (tmux): keys in
with send-keys, the screen read back with capture-pane."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from tests.integration.engine_fixture import EngineHandle

LLMCONSOLE = Path(sys.executable).parent / "llmconsole"


class Terminal:
    def __init__(self, engine: EngineHandle) -> None:
        assert shutil.which("tmux"), "tmux is needed (installed by .ci/run)"
        self.socket = f"llc-{uuid.uuid4().hex[:8]}"
        self.engine = engine

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True,
                              text=True, check=True).stdout

    def start(self, width: int = 120, height: int = 40) -> None:
        env = [f"LLMCONSOLE_HOME={self.engine.home}",
               f"LLMCONSOLE_PROFILES={self.engine.profiles}", "TERM=xterm-256color"]
        self.tmux("new-session", "-d", "-s", "main", "-x", str(width), "-y", str(height),
                  "env", *env, str(LLMCONSOLE))

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "main")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "main", *keys)

    def wait(self, predicate: Callable[[str], bool], timeout: float = 40.0) -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.screen()
            if predicate(text):
                return text
            time.sleep(0.2)
        raise AssertionError(f"screen never matched; last screen:\n{text}")

    def alive(self) -> bool:
        return subprocess.run(["tmux", "-L", self.socket, "has-session", "-t", "main"],
                              capture_output=True).returncode == 0

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


def test_submit_watch_and_quit_in_a_real_terminal(engine: EngineHandle) -> None:
    term = Terminal(engine)
    try:
        term.start(80, 24)  # the smallest terminal it promises to work in
        first = term.wait(lambda s: "engine: connected" in s)
        assert "LOSS" in first and "RUN" in first and "q Quit" in first  # the columns and keys fit
        term.keys("s")
        term.wait(lambda s: "Submit a job" in s)
        term.keys("hello", "Enter")
        screen = term.wait(lambda s: "succeeded" in s and "hello" in s)
        assert "Submit a job" not in screen
        term.keys("l")  # its logs, in the job's detail
        term.wait(lambda s: "hello from" in s and "Logs" in s and "History" in s)
        term.keys("Escape")
        term.wait(lambda s: "RUN" in s and "History" not in s)
        term.keys("q")
        deadline = time.monotonic() + 15
        while term.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not term.alive(), "q did not quit the screen"
    finally:
        term.close()
    jobs = engine.json("jobs", "--all")
    assert [(j["name"], j["state"]) for j in jobs] == [("hello", "succeeded")]
    status = engine.cli("engine", "status")  # quitting the screen leaves the engine up
    assert status.returncode == 0 and "running" in status.stdout


#: A command job printing known lines, three of them matching "needle".
LINES = ["alpha", "needle one", "beta", "needle two", "gamma", "needle three", "omega"]


def test_submit_and_search_the_logs_with_n_at_80x24(engine: EngineHandle) -> None:
    """The walk a new user takes in the smallest terminal: submit a job from
    the screen, open its logs, search them and jump between the matches with
    n and N, end the search, go back and quit."""
    argv = ["python3", "-c", f"print({chr(10).join(LINES)!r})"]
    engine.write_profile("lines", f'kind = "command"\ncommand = {json.dumps(argv)}\n')
    term = Terminal(engine)
    try:
        term.start(80, 24)
        term.wait(lambda s: "engine: connected" in s)
        term.keys("s")
        term.wait(lambda s: "Submit a job" in s)
        term.keys("lines", "Enter")
        term.wait(lambda s: "Submit a job" not in s and " lines " in s)
        job = 1
        term.keys(":")  # its logs, by the command line
        term.wait(lambda s: "q Quit" not in s)  # the command line's box, its own keys
        term.keys(f"logs {job}", "Enter")
        logs = term.wait(lambda s: "needle three" in s and "omega" in s)
        assert f"job {job}  lines" in logs
        term.keys("/")
        term.wait(lambda s: "search the log" in s)
        term.keys("needle", "Enter")
        first = term.wait(lambda s: "match 1/3" in s)
        assert "alpha" in first  # a search keeps every line
        term.keys("n")
        term.wait(lambda s: "match 2/3" in s)
        term.keys("n")
        term.wait(lambda s: "match 3/3" in s)
        term.keys("N")
        term.wait(lambda s: "match 2/3" in s)
        term.keys("Escape")  # ends the search
        term.wait(lambda s: "match" not in s and "needle two" in s)
        term.keys("Escape")  # back to the jobs
        term.wait(lambda s: "RUN" in s and "History" not in s)
        term.keys("q")
        deadline = time.monotonic() + 15
        while term.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not term.alive(), "q did not quit the screen"
    finally:
        term.close()
    assert engine.wait_state(job, ["succeeded"])["name"] == "lines"
