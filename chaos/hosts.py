"""Real SSH test hosts on this machine: one `sshd` per loopback address
(127.0.0.2, 127.0.0.3, ...), all on one port, with generated host keys and
a user key in a temporary folder. Every host shares this machine's
filesystem, so each has its own run root under that folder.

`SshHosts.start(count)` (a context manager; `close()` also runs at exit)
gives:
- `hosts` (`SshHost`: name "node1", "node2", ..., address, root), `port`,
  `user` (this user: the tests log in as themselves), `identity` (the user's
  private key), `known_hosts` (every host's key), `ssh_config` (a client
  config with a `Host` alias per host: node1 -> 127.0.0.2 with Port, User,
  IdentityFile and UserKnownHostsFile; pass it as `ssh -F` or as
  LLMCONSOLE_SSH_CONFIG, `env()`, so that /root/.ssh is never touched).
- `cluster_profile(path, ...)`: a cluster TOML with the head node and these
  hosts, each with its own root; `node_spec(name)` the same node as a NodeSpec.
- Faults: `stop(name)` / `start(name)` one host's sshd (its open sessions
  end too), `crash(name)` (that, and every process of its root: agents,
  supervisors, jobs), `hang(name)` / `resume(pid)` (SIGSTOP/SIGCONT the
  sshd session process serving the agent channel of a node on that host).
- `add()` another host, at the next address.
- `processes_naming(text)` and `marked(attempt)`: what is left of a root or
  of an attempt (its LLMCONSOLE_ATTEMPT marker) on any host.

Nothing here sends traffic outside 127.0.0.0/8. A host is ready when its
port answers with an SSH banner; every wait is generous, for a loaded
2-core machine. `close()` stops every sshd, kills every process that names
the folder (agents and jobs of its roots, ssh masters using its key) and
removes the folder: no test host survives the session.
"""

from __future__ import annotations

import atexit
import contextlib
import getpass
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from engine.model import NodeSpec

SSHD = "/usr/sbin/sshd"
FIRST_ADDRESS = 2  # 127.0.0.2: 127.0.0.1 stays the machine's own
READY_TIMEOUT_S = 30.0  # sshd up and answering, on a loaded 2-core machine
STOP_TIMEOUT_S = 10.0  # a SIGTERMed sshd exits well within this
PORT_TRIES = 10  # another test run may take a port between our probe and sshd's bind


@dataclass
class SshHost:
    name: str
    address: str
    folder: Path  # its host key, sshd config, pid file and log
    root: Path  # its run root (the node's agent and jobs live under it)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def host_key(self) -> Path:
        return self.folder / "ssh_host_ed25519_key"

    @property
    def public_key(self) -> str:
        """"ssh-ed25519 AAAA..." (its comment cut)."""
        return " ".join(Path(f"{self.host_key}.pub").read_text().split()[:2])

    @property
    def config(self) -> Path:
        return self.folder / "sshd_config"

    @property
    def log(self) -> Path:
        return self.folder / "sshd.log"

    @property
    def listener(self) -> psutil.Process | None:
        if self.proc is None or self.proc.poll() is not None:
            return None
        try:
            return psutil.Process(self.proc.pid)
        except psutil.NoSuchProcess:
            return None


@dataclass
class SshHosts:
    folder: Path
    port: int = 0
    user: str = field(default_factory=getpass.getuser)
    hosts: list[SshHost] = field(default_factory=list)

    # ------------------------------------------------------------ files
    @property
    def identity(self) -> Path:
        return self.folder / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.folder / "known_hosts"

    @property
    def ssh_config(self) -> Path:
        return self.folder / "ssh_config"

    def host(self, name: str) -> SshHost:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(f"no test host {name}: {[h.name for h in self.hosts]}")

    def known_name(self, name: str) -> str:
        """How known_hosts names the host: [address]:port."""
        return f"[{self.host(name).address}]:{self.port}"

    def known_line(self, name: str) -> str:
        return f"{self.known_name(name)} {self.host(name).public_key}\n"

    def fingerprint(self, name: str) -> str:
        """The host key's SHA256 fingerprint, as ssh-keygen prints it."""
        out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f",
                              f"{self.host(name).host_key}.pub"],
                             capture_output=True, text=True, check=True, timeout=30)
        return out.stdout.split()[1]

    def env(self, ssh_config: Path | None = None) -> dict[str, str]:
        """What an engine needs in its environment to use these hosts."""
        return {"LLMCONSOLE_SSH_CONFIG": str(ssh_config or self.ssh_config)}

    def write_known_hosts(self, path: Path, names: Iterable[str] | None = None) -> Path:
        names = [h.name for h in self.hosts] if names is None else list(names)
        path.write_text("".join(self.known_line(n) for n in names))
        return path

    def write_ssh_config(self, path: Path, known_hosts: Path | None = None) -> Path:
        """A client config with an alias per host, its host keys checked
        against `known_hosts` (default: every host's, `self.known_hosts`)."""
        kh = known_hosts or self.known_hosts
        blocks = [f"Host {h.name}\n    HostName {h.address}\n    Port {self.port}\n"
                  f"    User {self.user}\n    IdentityFile {self.identity}\n"
                  f"    IdentitiesOnly yes\n    UserKnownHostsFile {kh}\n" for h in self.hosts]
        blocks.append(f"Host *\n    UserKnownHostsFile {kh}\n    GlobalKnownHostsFile /dev/null\n"
                      f"    IdentityFile {self.identity}\n    StrictHostKeyChecking yes\n"
                      f"    BatchMode yes\n")
        path.write_text("\n".join(blocks))
        return path

    def node_spec(self, name: str, *, alias: bool = False, root: Path | str | None = None,
                  node: str | None = None) -> NodeSpec:
        """The host as a node: by address, port, user and identity, or only by
        its alias (`alias`: the ssh config says the rest)."""
        h = self.host(name)
        r = str(root or h.root)
        if alias:
            return NodeSpec(node or h.name, host=h.name, root=r)
        return NodeSpec(node or h.name, host=h.address, port=self.port, user=self.user,
                        identity=str(self.identity), root=r)

    def cluster_profile(self, path: Path, *, names: Sequence[str] | None = None,
                        head: str | None = "head", alias: bool = False,
                        known_hosts: Path | None = None, name: str = "test-cluster",
                        labels: dict[str, list[str]] | None = None,
                        roots: Path | None = None,
                        extra: dict[str, dict[str, Any]] | None = None) -> Path:
        """Write a cluster profile: the head node `head` (None: none) and the
        hosts `names` (default: all), each with its own root (`roots/NAME`;
        default: the host's `root`; give each engine its own, as attempt ids
        start at 1.1 in every engine); host keys in `known_hosts` (default:
        every host's). `extra` adds fields per node."""
        chosen = [h.name for h in self.hosts] if names is None else list(names)
        lines = ['kind = "cluster"', f"name = {json.dumps(name)}",
                 f"known_hosts = {json.dumps(str(known_hosts or self.known_hosts))}", ""]
        if head is not None:
            lines += ["[[nodes]]", f"name = {json.dumps(head)}"]
            lines += _toml_fields((extra or {}).get(head, {}))
            lines.append("")
        for n in chosen:
            spec = self.node_spec(n, alias=alias, root=None if roots is None else roots / n)
            fields: dict[str, Any] = {"host": spec.host}
            if not alias:
                fields.update(port=spec.port, user=spec.user, identity=spec.identity)
            fields["root"] = spec.root
            if labels and n in labels:
                fields["labels"] = labels[n]
            fields.update((extra or {}).get(n, {}))
            lines += ["[[nodes]]", f"name = {json.dumps(n)}", *_toml_fields(fields), ""]
        path.write_text("\n".join(lines))
        return path

    # ---------------------------------------------------------- commands
    def ssh(self, name: str, *argv: str, timeout: float = 60
            ) -> subprocess.CompletedProcess[str]:
        """Run argv on the host (through its alias in ssh_config)."""
        return subprocess.run(["ssh", "-F", str(self.ssh_config), "-T", name,
                               " ".join(shlex.quote(a) for a in argv)],
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    # -------------------------------------------------------------- life
    @classmethod
    @contextlib.contextmanager
    def start(cls, count: int = 2) -> Iterator[SshHosts]:
        hosts = cls.create(count)
        try:
            yield hosts
        finally:
            hosts.close()

    @classmethod
    def create(cls, count: int = 2) -> SshHosts:
        """Started hosts; the caller must `close()` them (also done at exit)."""
        folder = Path(tempfile.mkdtemp(prefix="llc-hosts-", dir="/tmp"))  # short paths
        hosts = cls(folder)
        atexit.register(hosts.close)
        try:
            os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation dir
            _keygen(hosts.identity)
            for _ in range(count):
                hosts._new_host()
            hosts._start_all()
        except BaseException:
            hosts.close()
            raise
        return hosts

    def add(self) -> SshHost:
        """One more host, at the next address, on the same port."""
        h = self._new_host()
        self._write_sshd_config(h)
        self.start_host(h.name)
        self.write_known_hosts(self.known_hosts)
        self.write_ssh_config(self.ssh_config)
        return h

    def _new_host(self) -> SshHost:
        n = len(self.hosts) + 1
        h = SshHost(f"node{n}", f"127.0.0.{FIRST_ADDRESS + n - 1}", self.folder / f"node{n}",
                    self.folder / "roots" / f"node{n}")
        h.folder.mkdir(mode=0o700)
        _keygen(h.host_key)
        self.hosts.append(h)
        return h

    def _start_all(self) -> None:
        (self.folder / "authorized_keys").write_text(Path(f"{self.identity}.pub").read_text())
        last = ""
        for _ in range(PORT_TRIES):
            self.port = _free_port([h.address for h in self.hosts])
            try:
                for h in self.hosts:
                    self._write_sshd_config(h)
                    self.start_host(h.name)
            except _PortTaken as e:
                last = str(e)
                for h in self.hosts:
                    self.stop(h.name)
                continue
            self.write_known_hosts(self.known_hosts)
            self.write_ssh_config(self.ssh_config)
            return
        raise RuntimeError(f"no port free on every test address after {PORT_TRIES} tries: "
                           f"{last}")

    def _write_sshd_config(self, h: SshHost) -> None:
        h.config.write_text(
            f"ListenAddress {h.address}:{self.port}\n"
            f"HostKey {h.host_key}\n"
            f"PidFile {h.folder / 'sshd.pid'}\n"
            "UsePAM no\n"
            f"AuthorizedKeysFile {self.folder / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "StrictModes no\n"  # the key file lives in a temporary folder
            "AllowAgentForwarding no\n"
            "AllowTcpForwarding no\n"
            "X11Forwarding no\n"
            "PermitUserEnvironment no\n"
            "UseDNS no\n"
            "PrintMotd no\n"
            "PrintLastLog no\n"
            "MaxStartups 200:30:400\n"  # parallel connections from a loaded test run
            "MaxSessions 100\n"
            "LoginGraceTime 120\n"
            "LogLevel VERBOSE\n")

    def start_host(self, name: str) -> None:
        """Start the host's sshd and return once its port answers SSH."""
        h = self.host(name)
        if h.listener is not None:
            return
        with open(h.log, "ab") as log:
            h.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(h.config)],
                                      stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                      start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if h.proc.poll() is not None:
                text = h.log.read_text(errors="replace")
                if "Address already in use" in text[-500:]:
                    raise _PortTaken(f"{h.address}:{self.port} is taken")
                raise RuntimeError(f"sshd of {h.name} exited {h.proc.returncode}: "
                                   f"{text[-2000:]}")
            if _answers_ssh(h.address, self.port):
                return
            time.sleep(0.05)
        raise RuntimeError(f"sshd of {h.name} did not answer on {h.address}:{self.port} "
                           f"within {READY_TIMEOUT_S:g} s: {h.log.read_text()[-2000:]}")

    def stop(self, name: str) -> None:
        """Stop the host's sshd and end its open sessions (their commands see
        their connection close). Agents and jobs started there keep running
        unless they end with their session; see `crash`."""
        h = self.host(name)
        listener = h.listener
        if listener is None or h.proc is None:
            return
        sessions = _descendants(listener)
        h.proc.terminate()
        try:
            h.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            h.proc.kill()
            h.proc.wait()
        for p in sessions:
            if _cmdline(p).startswith("sshd"):
                _kill(p.pid)
        h.proc = None

    def crash(self, name: str, *roots: Path | str) -> None:
        """The host goes away: its sshd, its sessions and every process of
        its root, and of `roots` when its nodes use others (agents,
        supervisors, jobs), are killed."""
        self.stop(name)
        for root in (self.host(name).root, *roots):
            for pid in processes_naming(str(root)):
                _kill(pid)

    def session_pid(self, name: str, node: str | None = None, timeout: float = 30.0) -> int:
        """The sshd session process on host `name` serving the agent channel
        (of node `node`, if given): the parent of that agent."""
        h = self.host(name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            listener = h.listener
            for p in _descendants(listener) if listener is not None else []:
                cmd = _cmdline(p)
                if "engine.agent" not in cmd:
                    continue
                if node is not None and f"--node {node} " not in f"{cmd} ":
                    continue
                with contextlib.suppress(psutil.NoSuchProcess):
                    parent = p.parent()
                    if parent is not None and _cmdline(parent).startswith("sshd"):
                        return parent.pid
            time.sleep(0.05)
        raise AssertionError(f"no agent session on {name}" + (f" for node {node}" if node else ""))

    def hang(self, name: str, node: str | None = None) -> int:
        """SIGSTOP the session process serving the agent channel; the link
        stays open and silent. Returns its pid for `resume`."""
        pid = self.session_pid(name, node)
        os.kill(pid, signal.SIGSTOP)
        return pid

    def resume(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)

    def close(self) -> None:
        """Stop every host, kill what names the folder, remove the folder."""
        for h in self.hosts:
            with contextlib.suppress(Exception):
                if h.proc is not None:
                    self.resume(h.proc.pid)
                self.stop(h.name)
        for _ in range(3):  # a killed agent's child may show up once
            pids = processes_naming(str(self.folder))
            if not pids:
                break
            for pid in pids:
                self.resume(pid)
                _kill(pid)
            time.sleep(0.05)
        shutil.rmtree(self.folder, ignore_errors=True)
        atexit.unregister(self.close)


class _PortTaken(Exception):
    pass


def _toml_fields(fields: dict[str, Any]) -> list[str]:
    return [f"{k} = {json.dumps(v)}" for k, v in fields.items() if v is not None]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name,
                    "-f", str(path)], check=True, timeout=60, stdin=subprocess.DEVNULL,
                   capture_output=True)


def _free_port(addresses: Sequence[str]) -> int:
    """A port free on every address (probed by binding, then released)."""
    while True:
        with socket.socket() as s:
            s.bind((addresses[0], 0))
            port = int(s.getsockname()[1])
        try:
            for a in addresses:
                with socket.socket() as s:
                    s.bind((a, port))
        except OSError:
            continue
        return port


def _answers_ssh(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=5) as s:
            s.settimeout(10)
            return s.recv(8).startswith(b"SSH-")
    except OSError:
        return False


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return ""


def _descendants(p: psutil.Process) -> list[psutil.Process]:
    try:
        return list(p.children(recursive=True))
    except psutil.NoSuchProcess:
        return []


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def processes_naming(text: str) -> list[int]:
    """Processes (not this one, not its ancestors) whose command line or
    environment contains `text`."""
    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    needle = text.encode()
    found = []
    for pid in psutil.pids():
        if pid in mine:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if needle in cmd or needle in env:
            found.append(pid)
    return found


def marked(attempt: str, home: Path | str | None = None) -> list[str]:
    """Command lines of live processes carrying the attempt's marker (and,
    with `home`, naming that engine home in their environment: other
    engines on this machine number their attempts too)."""
    marker = f"LLMCONSOLE_ATTEMPT={attempt}".encode()
    where = None if home is None else str(home).encode()
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            with open(f"/proc/{p.pid}/environ", "rb") as f:
                env = f.read()
            if marker in env.split(b"\0") and (where is None or where in env):
                found.append(" ".join(p.info["cmdline"] or []))
        except OSError:
            continue
    return found
