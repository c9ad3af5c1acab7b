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

from chaos.engine_handle import EngineHandle

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

    def quit(self) -> None:
        """q, and the screen is gone within 15 s."""
        self.keys("q")
        deadline = time.monotonic() + 15
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not self.alive(), "q did not quit the screen"

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
        term.quit()
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
        term.quit()
    finally:
        term.close()
    assert engine.wait_state(job, ["succeeded"])["name"] == "lines"


#: pretrain-tiny made tiny (the micro model, a slice of the demo corpus, ten
#: steps, one horovod worker each): two of them train side by side in about
#: 40 s on 2 cores.
TINY_TRAIN = """\
kind = "train"
launcher = "horovodrun"
[resources]
cpus = 1
[args]
model = "micro"
corpus = "demo"
max_docs = 200
block_size = 32
vocab_size = 256
batch_size = 4
eval_batches = 2
max_steps = 10
warmup_steps = 2
log_every = 1
checkpoint_every = 10
eval_every = 10
"""


def test_submit_mark_and_compare_two_trainings_at_80x24(engine: EngineHandle) -> None:
    """Two trainings submitted from the form, each typed in one instant
    with the `s` that opens it (the name, a Tab, an override, enter), marked
    with space (the cursor is on the job just submitted; down goes to the
    one before), compared with m: both runs named on the overlay, the
    results table of `llmconsole compare`, x by time, smoothing changed,
    esc back, q quits."""
    engine.write_profile("tiny-train", TINY_TRAIN)
    term = Terminal(engine)
    try:
        term.start(80, 24)
        term.wait(lambda s: "engine: connected" in s)
        term.keys("s", "tiny-train", "Enter")  # one instant: every key in the form
        term.wait(lambda s: "Submit a job" not in s and "1     tiny-train" in s)
        term.keys("s", "tiny-train", "Tab", "args.seed=7", "Enter")
        term.wait(lambda s: "Submit a job" not in s and "2     tiny-train" in s)
        term.wait(lambda s: s.count("succeeded") == 2, timeout=240)
        term.keys("Space")  # job 2, the one just submitted
        term.wait(lambda s: "✓2 " in s)
        term.keys("Down", "Space")
        marked = term.wait(lambda s: "✓1 " in s)
        assert "✓2 " in marked  # space marked the second job, not the first again
        term.keys("m")
        shown = term.wait(lambda s: "compare jobs 2 (tiny-train), 1 (tiny-train)" in s
                          and "2 tiny-train" in s and "1 tiny-train" in s)  # the legend
        assert "x: step" in shown and "smoothing 0.8" in shown
        table = json.loads(engine.cli("compare", "--json", "2", "1").stdout)
        assert len(table["rows"]) == 2
        for row in table["rows"]:  # the results table: llmconsole compare's rows, in order
            assert f" {row['name']}  {row['label']} " in shown, (row, shown)
        assert shown.index(table["rows"][0]["name"]) < shown.index(table["rows"][1]["name"])
        term.keys("x")
        term.wait(lambda s: "x: seconds from each run's start" in s)
        term.keys("+")
        term.wait(lambda s: "smoothing 0.9" in s)
        term.keys("-", "-")
        term.wait(lambda s: "smoothing 0.5" in s)
        term.keys("Escape")
        back = term.wait(lambda s: "RUN" in s and "compare jobs" not in s)
        assert "✓2 " in back and "✓1 " in back  # the marks stay
        term.quit()
    finally:
        term.close()
    jobs = {j["id"]: j for j in engine.json("jobs", "--all")}
    assert [jobs[i]["state"] for i in (1, 2)] == ["succeeded", "succeeded"]
    argv = engine.job(2)["spec"]["argv"]  # the override typed after the Tab
    assert argv[argv.index("--seed") + 1] == "7", argv
    assert engine.job(1)["output"] != engine.job(2)["output"]  # a folder each
