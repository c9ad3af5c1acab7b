"""A real engine daemon in a throw-away home, driven through the real CLI
(`python -m engine ...` in a subprocess), for integration tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chaos.hosts import SshHosts

REPO = Path(__file__).resolve().parents[1]


class EngineHandle:
    def __init__(self, home: Path, profiles: Path) -> None:
        self.home = home
        self.profiles = profiles
        self.env = {
            **os.environ,
            "LLMCONSOLE_HOME": str(home),
            "LLMCONSOLE_PROFILES": str(profiles),
            "PYTHONPATH": str(REPO),
        }
        self.env.pop("LLMCONSOLE_SOCKET", None)
        self.env.pop("LLMCONSOLE_CLUSTER", None)
        self._server: subprocess.Popen[bytes] | None = None

    def serve(self, *args: str, timeout: float = 30, prefix: Iterable[str] = (),
              python: str = sys.executable) -> None:
        """Start the daemon with `engine serve ARGS` (e.g. --socket-mode 666)
        instead of letting the first CLI call start it with the defaults;
        return once it answers. `prefix` runs it as another user (setpriv)."""
        server = self.spawn(*args, prefix=prefix, python=python)
        deadline = time.monotonic() + timeout
        while self.cli("engine", "status", check=False).returncode != 0:
            if server.poll() is not None or time.monotonic() > deadline:
                log_text = (self.home / "engine.log").read_text(errors="replace")
                raise AssertionError(f"engine serve {' '.join(args)} did not come up "
                                     f"(exit {server.poll()}): {log_text[-2000:]}")
            time.sleep(0.05)

    def spawn(self, *args: str, prefix: Iterable[str] = (), python: str = sys.executable
              ) -> subprocess.Popen[bytes]:
        """Start `engine serve ARGS` (output to engine.log) and return at once;
        `close()` stops and waits for the daemon last spawned."""
        with open(self.home / "engine.log", "ab") as log:
            self._server = subprocess.Popen(
                [*prefix, python, "-m", "engine", "engine", "serve", *args], env=self.env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.home,
                start_new_session=True)
        return self._server

    def cli(self, *args: str, check: bool = True, timeout: float = 60,
            prefix: Iterable[str] = (), python: str = sys.executable
            ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*prefix, python, "-m", "engine", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout, cwd=self.home)
        if check and proc.returncode != 0:
            raise AssertionError(f"llmconsole {' '.join(args)} exited {proc.returncode}: "
                                 f"{proc.stderr.strip()}")
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def submit(self, profile: str, *extra: str) -> int:
        return int(self.json("submit", profile, *extra)["id"])

    def job(self, job_id: int) -> dict[str, Any]:
        return dict(self.json("show", str(job_id)))

    def wait_state(self, job_id: int, states: Iterable[str], timeout: float = 30.0
                   ) -> dict[str, Any]:
        wanted = set(states)
        deadline = time.monotonic() + timeout
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["state"] in wanted:
                return job
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} still {job.get('state')} after {timeout}s, "
                             f"wanted {sorted(wanted)}: {job}")

    def write_profile(self, name: str, text: str) -> Path:
        path = self.profiles / f"{name}.toml"
        path.write_text(text)
        return path

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.cli("engine", "stop", check=False, timeout=30)
        if self._server is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._server.wait(timeout=10)
        kill_marked(str(self.home))
        if self._server is not None:
            self._server.wait()


def kill_marked(marker: str) -> None:
    """Kill every process whose environment or command line points into
    `marker` (job processes and agents left by a test; a remote node's agent
    carries the engine home only on its command line, --root HOME/nodes/X)."""
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit() or int(pid_dir.name) == os.getpid():
            continue
        try:
            seen = (pid_dir / "environ").read_bytes() + (pid_dir / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in seen:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(pid_dir.name), signal.SIGKILL)


def new_engine(traversable: bool = False) -> EngineHandle:
    """A throw-away home (mode 0700; 0711 with `traversable`, so that other
    users reach the socket of a shared engine)."""
    # short path: a Unix socket path must stay under 108 bytes
    home = Path(tempfile.mkdtemp(prefix="llc-", dir="/tmp"))
    if traversable:
        home.chmod(0o711)
    profiles = home / "profiles"
    profiles.mkdir()
    return EngineHandle(home, profiles)


@contextlib.contextmanager
def engine_on_hosts(hosts: SshHosts, up_timeout: float, *, head: str | None = None,
                    env: dict[str, str] | None = None, serve_args: Iterable[str] = (),
                    labels: dict[str, list[str]] | None = None) -> Iterator[EngineHandle]:
    """A new engine serving a cluster of every test host (and the head node
    `head`, None: none), each node's root under the engine home, `env` added
    to the daemon's environment, `engine serve` given `serve_args`; yielded
    once every node is up. At exit every host is started again (a test may
    leave one stopped), the daemon stops, whatever still runs under the
    roots is killed and the home removed."""
    import shutil

    import psutil

    from chaos.hosts import processes_naming

    handle = new_engine()
    roots = handle.home / "roots"
    profile = hosts.cluster_profile(handle.home / "cluster.toml", head=head, roots=roots,
                                    labels=labels)
    handle.env.update(hosts.env())
    handle.env.update(env or {})
    want = {name: "up" for name in ([head] if head else []) + [h.name for h in hosts.hosts]}
    try:
        handle.serve("--cluster", str(profile), *serve_args)
        deadline = time.monotonic() + up_timeout
        while {n["name"]: n["state"] for n in handle.json("nodes")} != want:
            assert time.monotonic() < deadline, handle.cli("nodes").stdout
            time.sleep(0.2)
        yield handle
    finally:
        for h in hosts.hosts:
            with contextlib.suppress(Exception):
                hosts.start_host(h.name)
        handle.close()
        for pid in processes_naming(str(roots)):
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()
        shutil.rmtree(handle.home, ignore_errors=True)
