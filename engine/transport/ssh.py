"""The SSH transport: `SshAgentChannel`, a node agent on another machine
behind ONE long-lived `ssh -T` whose remote command is the agent
(`local.agent_argv` with the node's python and root), and `ssh_command`,
a short command on a node (what `llmconsole nodes check` runs).

It drives the OpenSSH client, so everything the user's ~/.ssh/config says
(ProxyJump, aliases, keys, ports) applies; options given here win over it:

- BatchMode=yes (never a prompt), StrictHostKeyChecking=yes (an unknown or
  changed host key is refused by ssh itself, see engine.hostkeys: nothing
  runs on an untrusted node), ServerAliveInterval 5 s x ServerAliveCountMax
  3 (a silent link ends the channel in about 15 s), ConnectTimeout 10 s,
  ForwardAgent=no, ForwardX11=no, ClearAllForwardings=yes,
  PermitLocalCommand=no, LogLevel=ERROR (ssh's host-key complaints are
  errors, so they are never silenced by a quiet config), `-e none`, `-p`
  port, `-i` identity with IdentitiesOnly=yes, `-l` user (each only when the
  node names one), UserKnownHostsFile when the cluster profile names its
  `known_hosts`.
- The agent's channel is its own connection (ControlMaster=no): its ssh
  process is the link, and the link's health is that process's. Short
  commands share one master per node: ControlMaster=auto, ControlPath
  `<engine home>/ssh/%C`, ControlPersist 60 s (a warm command costs about
  0.03 s against 0.38 s for a fresh connection). When that path would pass
  the 107 bytes a Unix socket path may have, short commands go without a
  master.
- On the command line: the options above, the destination, and the remote
  command, built in one place (`remote_command`): every word of the argv
  `shlex.quote`d into the one string the remote shell sees, so it arrives
  byte for byte (only the profile's `python` and `root` may start with `~/`,
  left for that shell to expand to the node user's home). Never there: the
  engine's environment, commands' contents (they travel on the agent's
  stdin), secrets.
- ssh itself runs with an allow-listed environment (`ssh_env`: PATH, HOME,
  USER, LOGNAME, SSH_AUTH_SOCK for the user's agent keys, KRB5CCNAME), so
  no SendEnv of any config can carry the engine's variables to a node. The
  agent's environment on the node is the one its login gives it (sshd's
  and the login shell's), never the engine's; the project must be
  importable by the node's python (the same .venv on every node).
- `LLMCONSOLE_SSH_CONFIG` names an ssh client config to use instead of
  ~/.ssh/config (`ssh -F`). It exists for tests (test hosts on loopback that
  must not touch the user's files); normally leave it unset.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from engine import hostkeys
from engine.model import NodeSpec, node_python, node_root
from engine.transport.base import AgentError
from engine.transport.local import agent_argv
from engine.transport.subprocess_channel import HELLO_TIMEOUT_S, SubprocessChannel

SSH = "ssh"
SSH_CONFIG_ENV = "LLMCONSOLE_SSH_CONFIG"
# A keepalive every 5 s, given up after 3 unanswered: a hung link or node
# ends the channel in about 15 s (SkyPilot and Ray use the same).
SERVER_ALIVE_INTERVAL_S = 5
SERVER_ALIVE_COUNT_MAX = 3
# TCP connect and SSH banner: a node that does not answer within this is down.
CONNECT_TIMEOUT_S = 10
# An idle short-command master stays this long: `nodes check` runs several
# commands in a row, and telemetry never uses it.
CONTROL_PERSIST_S = 60
# A short command (nodes check) that has not finished in this is reported as
# a failure naming the node, not waited for.
SHORT_COMMAND_TIMEOUT_S = 30.0
# The hello of a remote agent comes after the connection: both budgets.
SSH_HELLO_TIMEOUT_S = CONNECT_TIMEOUT_S + HELLO_TIMEOUT_S
# What ssh may see of the engine's environment (see the module docstring).
SSH_ENV_NAMES = ("PATH", "HOME", "USER", "LOGNAME", "SSH_AUTH_SOCK", "KRB5CCNAME")
# sun_path holds 107 bytes and a NUL; ssh names a master's socket
# <ControlPath>.<16 random characters> while it binds it, and %C is 40 hex digits.
UNIX_SOCKET_PATH_MAX = 107
CONTROL_NAME_LEN = 40 + 17


def ssh_config_path() -> str | None:
    """The ssh config given by LLMCONSOLE_SSH_CONFIG (tests), else None."""
    return os.environ.get(SSH_CONFIG_ENV) or None


def ssh_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment ssh runs with: only SSH_ENV_NAMES of `base` (os.environ)."""
    env = os.environ if base is None else base
    return {k: env[k] for k in SSH_ENV_NAMES if k in env}


def control_path(home: Path | str) -> str | None:
    """`<home>/ssh/%C` for short commands' masters (its folder made 0700),
    or None when a socket there would be too long for a Unix socket."""
    folder = Path(home) / "ssh"
    if len(os.fsencode(str(folder))) + 1 + CONTROL_NAME_LEN > UNIX_SOCKET_PATH_MAX:
        return None
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return f"{folder}/%C"


def _option_value(path: str) -> str:
    """A file name as an ssh -o value (ssh splits unquoted values on spaces)."""
    path = str(Path(path).expanduser())
    return f'"{path}"' if any(c.isspace() for c in path) else path


def ssh_options(spec: NodeSpec, *, known_hosts: str | None = None, control: str | None = None,
                ssh_config: str | None = None) -> list[str]:
    """Every option of every ssh this transport runs, destination excluded.
    `control` is a ControlPath for a shared master (None: no master)."""
    opts: list[str] = []
    if ssh_config is not None:
        opts += ["-F", str(Path(ssh_config).expanduser())]
    opts += ["-T", "-e", "none",
             "-o", "BatchMode=yes",
             "-o", "StrictHostKeyChecking=yes",
             "-o", f"ServerAliveInterval={SERVER_ALIVE_INTERVAL_S}",
             "-o", f"ServerAliveCountMax={SERVER_ALIVE_COUNT_MAX}",
             "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
             "-o", "ForwardAgent=no",
             "-o", "ForwardX11=no",
             "-o", "ClearAllForwardings=yes",
             "-o", "PermitLocalCommand=no",
             "-o", "LogLevel=ERROR"]
    if control is None:
        opts += ["-o", "ControlMaster=no", "-o", "ControlPath=none"]
    else:
        opts += ["-o", "ControlMaster=auto", "-o", f"ControlPath={control}",
                 "-o", f"ControlPersist={CONTROL_PERSIST_S}"]
    if known_hosts is not None:
        opts += ["-o", f"UserKnownHostsFile={_option_value(known_hosts)}"]
    if spec.port is not None:
        opts += ["-p", str(spec.port)]
    if spec.identity is not None:
        opts += ["-i", str(Path(spec.identity).expanduser()), "-o", "IdentitiesOnly=yes"]
    if spec.user is not None:
        opts += ["-l", spec.user]
    return opts


def _destination(spec: NodeSpec) -> str:
    if spec.host is None:
        raise ValueError(f"node {spec.name} is the head node: it has no host to ssh to")
    return spec.host


class HomePath(str):
    """A path on the node from its profile (`python`, `root`) whose leading
    `~` the node's shell expands to the home of the node's user. Every other
    word of a remote command reaches the node exactly as it is."""


def home_path(path: str) -> str:
    """`path` as a HomePath when it starts with `~/` (or is `~`), else as is."""
    return HomePath(path) if path == "~" or path.startswith("~/") else path


def _word(arg: str) -> str:
    if isinstance(arg, HomePath) and (arg == "~" or arg.startswith("~/")):
        return "~" if arg == "~" else "~/" + (shlex.quote(arg[2:]) if arg[2:] else "")
    return shlex.quote(arg)


def remote_command(argv: Sequence[str]) -> str:
    """The one string the node's shell runs for `argv`: `exec` and every
    word quoted, so the program gets each word byte for byte (a HomePath's
    leading `~` left for that shell to expand, nothing else)."""
    if not argv:
        raise ValueError("an empty remote command")
    return "exec " + " ".join(_word(a) for a in argv)


def ssh_argv(spec: NodeSpec, argv: Sequence[str], *, known_hosts: str | None = None,
             control: str | None = None, ssh_config: str | None = None) -> list[str]:
    """`ssh OPTIONS -- HOST 'exec ARGV...'`: argv run on the node."""
    return [SSH, *ssh_options(spec, known_hosts=known_hosts, control=control,
                              ssh_config=ssh_config),
            "--", _destination(spec), remote_command(argv)]


def query_argv(spec: NodeSpec, *, known_hosts: str | None = None,
               ssh_config: str | None = None) -> list[str]:
    """`ssh -G` with the same options: what ssh would do, without connecting
    (engine.hostkeys resolves hosts, ports and known_hosts files with it)."""
    return [SSH, "-G", *ssh_options(spec, known_hosts=known_hosts, ssh_config=ssh_config),
            "--", _destination(spec)]


def remote_agent_argv(spec: NodeSpec, home: Path | str, interval: float = 1.0,
                      extra_args: Sequence[str] = ()) -> list[str]:
    """The agent's argv on the node: its python and its root
    (engine.model.node_python, node_root), each a `home_path`."""
    argv = agent_argv(spec.name, node_root(spec, home), interval, node_python(spec), extra_args)
    argv[0] = home_path(argv[0])
    at = argv.index("--root") + 1
    argv[at] = home_path(argv[at])
    return argv


class SshAgentChannel(SubprocessChannel):
    """The agent of a remote node behind one `ssh -T`; a SubprocessChannel
    that differs from the local one only in its argv and environment. A
    host-key refusal raises engine.hostkeys.HostKeyUnknown or HostKeyChanged
    (AgentErrors with state "untrusted") from `start`."""

    def __init__(self, spec: NodeSpec, home: Path | str, interval: float = 1.0, *,
                 known_hosts: str | None = None, extra_args: Sequence[str] = (),
                 hello_timeout: float = SSH_HELLO_TIMEOUT_S,
                 ssh_config: str | None = None) -> None:
        """`ssh_config` None: LLMCONSOLE_SSH_CONFIG if set, else ssh's own."""
        self.spec = spec
        self.root = node_root(spec, home)
        self.known_hosts = known_hosts
        self.ssh_config = ssh_config if ssh_config is not None else ssh_config_path()
        argv = ssh_argv(spec, remote_agent_argv(spec, home, interval, extra_args),
                        known_hosts=known_hosts, ssh_config=self.ssh_config)
        super().__init__(spec.name, argv, ssh_env(), hello_timeout)

    async def start(self) -> None:
        try:
            await super().start()
        except AgentError as err:
            stderr = "\n".join(self._stderr_tail)
            if hostkeys.classify(stderr) is None:
                raise
            refused = await asyncio.to_thread(
                hostkeys.refusal, self.node, stderr,
                query_argv(self.spec, known_hosts=self.known_hosts, ssh_config=self.ssh_config),
                self.known_hosts, self.env)
            raise (refused or err) from None


def ssh_command(spec: NodeSpec, argv: Sequence[str], *, home: Path | str,
                known_hosts: str | None = None, timeout: float = SHORT_COMMAND_TIMEOUT_S,
                input: bytes | None = None, ssh_config: str | None = None
                ) -> subprocess.CompletedProcess[bytes]:
    """Run `argv` on the node through its shared master and return ssh's
    CompletedProcess (returncode 255: ssh itself failed; stderr says why).
    Raises engine.hostkeys.HostKeyUnknown/HostKeyChanged when ssh refused
    the host key, AgentError when ssh cannot run or `timeout` passes.
    Blocking: from the event loop, call it in a thread."""
    config = ssh_config if ssh_config is not None else ssh_config_path()
    cmd = ssh_argv(spec, argv, known_hosts=known_hosts, control=control_path(home),
                   ssh_config=config)
    env = ssh_env()
    try:
        proc = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout, env=env,
                              stdin=subprocess.DEVNULL if input is None else None)
    except subprocess.TimeoutExpired:
        raise AgentError(spec.name, f"ssh to {spec.host} gave no answer within "
                                    f"{timeout:g} s") from None
    except OSError as e:
        raise AgentError(spec.name, f"cannot run {SSH}: {e}") from None
    if proc.returncode == 255:
        stderr = proc.stderr.decode(errors="replace")
        refused = hostkeys.refusal(spec.name, stderr, query_argv(
            spec, known_hosts=known_hosts, ssh_config=config), known_hosts, env)
        if refused is not None:
            raise refused
    return proc
