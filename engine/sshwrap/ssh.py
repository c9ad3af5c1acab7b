"""llmconsole's `ssh` for horovodrun across nodes: every ssh that horovodrun
runs (its pre-launch check of each host, its task servers, the ranks) comes
here first and leaves as the real OpenSSH client with strict host keys.

horovod 0.28.1 hard-codes an ssh command line that turns host-key checking
off (`-o PasswordAuthentication=no`, then the StrictHostKeyChecking option
set to "no", then HOST [-p P] [-i I] [-o ConnectTimeout=T] COMMAND) and runs
it through a shell, so ssh is looked up on PATH. This wrapper drops that
option (`rewrite`, `HOST_KEY_OPTIONS`) and puts StrictHostKeyChecking=yes
first. Options on ssh's command line win over any ssh config, so only a
program of ours, first on PATH, can take that option away. Standard
library only, no package imports: it runs under `-I -S` on the launching
node, like the agent's supervisor.

Two modes:

    python -I -S ssh.py launch [--hosts JSON] [--known-hosts FILE] -- PROGRAM [ARG...]

  The job's first program on the launching node (engine.launch puts it in
  front of horovodrun). It records the real ssh (`LLMCONSOLE_REAL_SSH`: the
  first `ssh` on PATH outside bin/, an absolute path) and this python
  (`LLMCONSOLE_SSHWRAP_PYTHON`), puts bin/ first on PATH, passes the hosts
  table (`LLMCONSOLE_SSH_HOSTS`) and the cluster's known_hosts
  (`LLMCONSOLE_SSH_KNOWN_HOSTS`) on in the environment, and execs PROGRAM.
  No ssh on PATH, or a bad table: one line on stderr and exit 127 / 2.

    python -I -S ssh.py wrap SSH-ARG...        (what bin/ssh runs)

  Parses the arguments as ssh itself does (`parse_ssh_args`), rewrites them
  (`rewrite`) and execs the real ssh with them. An argument ssh would not
  take, or no real ssh: one line on stderr and exit 255 (ssh's own).

What `rewrite` does, whatever order or spelling the options come in (glued
`-oKey=value` or apart, `Key value` or `Key=value`, any case, flags
bundled as `-vA`):
- drops what weakens host keys or authentication prompts
  (`HOST_KEY_OPTIONS`), what forwards anything (`FORWARDING_OPTIONS`, -A,
  -X, -Y, -L, -R, -D, -W, -w), what reuses another connection
  (`CONNECTION_OPTIONS`, -S), and -F when LLMCONSOLE_SSH_CONFIG names the
  config; for a host of the table also -p, -l, -i and their -o forms;
- puts ours first (`STRICT_OPTIONS`: StrictHostKeyChecking=yes,
  BatchMode=yes, no agent or X11 forwarding, ClearAllForwardings, no
  shared master), then UserKnownHostsFile when the cluster names one, then
  the host's Port, User, IdentityFile and IdentitiesOnly=yes from the
  table, so nodes may differ where horovodrun's -p/-i take one value;
- writes the rest back one option per word and `--` before the
  destination, so nothing after it is read as an option.
ssh keeps the first value it gets for an option, so ours, first, win over
anything left, and over every ssh config. The table holds paths, ports and
user names, never secrets: horovodrun copies it onto the ranks' command
lines with the rest of the job's environment.

Secrets (engine/secrets.py): when the job has some, `LLMCONSOLE_SECRETS_FD`
names the file that engine/secret_exec.py's keeper holds them in. An ssh
whose remote command starts a rank (`secret_exec.py rank`) then gets them
on its stdin (a pipe holding them, then its end) and its command becomes
`env LLMCONSOLE_SECRETS_STDIN=1 sh -c 'COMMAND'`, so the rank on the other
node reads them from the session; no command line holds them. The keeper's
file unreadable: one line on stderr, exit 255.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import NamedTuple

ENV_REAL_SSH = "LLMCONSOLE_REAL_SSH"
ENV_PYTHON = "LLMCONSOLE_SSHWRAP_PYTHON"
ENV_HOSTS = "LLMCONSOLE_SSH_HOSTS"
ENV_KNOWN_HOSTS = "LLMCONSOLE_SSH_KNOWN_HOSTS"
# The engine's own ssh config, when it has one (engine.transport.ssh's
# SSH_CONFIG_ENV, used by tests): the job's ssh reads the same (-F).
ENV_CONFIG = "LLMCONSOLE_SSH_CONFIG"
# engine/secret_exec.py's: the keeper's file of the job's secrets (a path),
# and the mark that tells a rank on another node to read them from stdin.
ENV_SECRETS_FD = "LLMCONSOLE_SECRETS_FD"
ENV_SECRETS_STDIN = "LLMCONSOLE_SECRETS_STDIN"
# How a rank's command names secret_exec.py's rank mode, its path quoted by
# horovodrun (shlex.quote) or not.
RANK_MARKS = ("secret_exec.py rank -- ", "secret_exec.py' rank -- ")
MAX_SECRETS = 60_000  # secret_exec.MAX_BYTES: one write into an empty pipe

HERE = os.path.dirname(os.path.abspath(__file__))
BIN_DIR = os.path.join(HERE, "bin")
WRAPPER = os.path.join(BIN_DIR, "ssh")

# OpenSSH's getopt string: "1246ab:c:e:fgi:kl:m:no:p:qstvxAB:CD:E:F:GI:J:KL:MNO:P:Q:R:S:TVw:W:XYy"
FLAGS = frozenset("1246AaCfGgKkMNnqsTtVvXxYy")
WITH_VALUE = frozenset("BbcDEeFIiJLlmOoPpQRSWw")

STRICT_OPTIONS = (
    "StrictHostKeyChecking=yes",  # an unknown or changed host key is refused
    "BatchMode=yes",  # never a prompt (no password, no "are you sure")
    "ForwardAgent=no",
    "ForwardX11=no",
    "ClearAllForwardings=yes",
    "PermitLocalCommand=no",
    "ControlMaster=no",  # a shared master may have been opened without our checks
    "ControlPath=none",
)
# -o keywords (lowercase) taken out of the caller's arguments.
HOST_KEY_OPTIONS = frozenset({
    "stricthostkeychecking", "userknownhostsfile", "globalknownhostsfile",
    "knownhostscommand", "verifyhostkeydns", "passwordauthentication", "batchmode",
})
FORWARDING_OPTIONS = frozenset({
    "forwardagent", "forwardx11", "forwardx11trusted", "localforward", "remoteforward",
    "dynamicforward", "clearallforwardings", "gatewayports", "tunnel", "tunneldevice",
    "permitlocalcommand", "localcommand",
})
CONNECTION_OPTIONS = frozenset({"controlmaster", "controlpath", "controlpersist"})
DROPPED_OPTIONS = HOST_KEY_OPTIONS | FORWARDING_OPTIONS | CONNECTION_OPTIONS
DROPPED_FLAGS = frozenset("AXYLRDWwS")
# What the table sets for its hosts, as flags and as -o keywords.
ENTRY_FLAGS = frozenset("pli")
ENTRY_OPTIONS = frozenset({"port", "user", "identityfile", "identitiesonly"})

_WHITESPACE = " \t\r\n"


class WrapError(ValueError):
    """Arguments or settings the wrapper refuses; the message is one line."""


class HostEntry(NamedTuple):
    """How to reach one host of the allocation (None: ssh's own choice)."""

    port: int | None = None
    user: str | None = None
    identity: str | None = None


class Policy(NamedTuple):
    hosts: Mapping[str, HostEntry]  # by the host name horovodrun uses (its -H)
    known_hosts: str | None = None  # the cluster's known_hosts file
    config: str | None = None  # an ssh config for -F


class Parsed(NamedTuple):
    options: list[tuple[str, str | None]]  # (letter, value or None for a flag)
    destination: str | None
    command: list[str]


# ---------------------------------------------------------------- parsing


def parse_ssh_args(args: Sequence[str]) -> Parsed:
    """Split ssh's arguments the way OpenSSH does: options (BSD getopt, no
    permutation) up to the first word that is not one, the destination,
    then options again unless a `--` came before the destination, then the
    remote command. Raises WrapError for an unknown option or a missing
    value."""
    options: list[tuple[str, str | None]] = []

    def scan(i: int) -> tuple[int, bool]:
        """Options from args[i]; -> (index of the first non-option, `--` seen)."""
        while i < len(args):
            word = args[i]
            if word == "--":
                return i + 1, True
            if not word.startswith("-") or word == "-":
                return i, False
            j = 1
            while j < len(word):
                letter = word[j]
                if letter in WITH_VALUE:
                    if j + 1 < len(word):
                        value = word[j + 1:]
                    elif i + 1 < len(args):
                        i += 1
                        value = args[i]
                    else:
                        raise WrapError(f"option -{letter} needs a value")
                    options.append((letter, value))
                    break
                if letter not in FLAGS:
                    raise WrapError(f"unknown option -{letter} in {word!r}")
                options.append((letter, None))
                j += 1
            i += 1
        return i, False

    i, terminated = scan(0)
    destination = None
    if i < len(args):
        destination = args[i]
        i += 1
        if not terminated and i < len(args):
            i, _ = scan(i)
    return Parsed(options, destination, list(args[i:]))


def option_keyword(value: str) -> str:
    """The keyword of an `-o` value, lowercase, read as ssh reads a config
    line: leading blanks skipped, then a quoted word or up to a blank or '='."""
    text = value.lstrip(_WHITESPACE)
    if text.startswith('"'):
        return text[1:].split('"', 1)[0].lower()
    for i, c in enumerate(text):
        if c in _WHITESPACE or c == "=":
            return text[:i].lower()
    return text.lower()


def destination_host(destination: str) -> str:
    """The host of `[user@]host` or `ssh://[user@]host[:port]`."""
    if destination.startswith("ssh://"):
        rest = destination[len("ssh://"):].split("/", 1)[0].rpartition("@")[2]
        if rest.startswith("["):
            return rest[1:].split("]", 1)[0]
        return rest.rsplit(":", 1)[0] if rest.count(":") == 1 else rest
    return destination.rpartition("@")[2]


# ---------------------------------------------------------------- values


def path_value(path: str, what: str) -> str:
    """A file name as an ssh -o value: '%' doubled (ssh expands %-tokens in
    these), quoted when it holds blanks (ssh splits on them); a quote, a
    control character or `${` (ssh expands variables) is refused."""
    if not path or any(c == '"' or ord(c) < 32 or ord(c) == 127 for c in path) \
            or "${" in path:
        raise WrapError(f"{what} {path!r} cannot be given to ssh (empty, or a quote, control "
                        "character or '${' in it); use another path")
    path = path.replace("%", "%%")
    return f'"{path}"' if any(c in _WHITESPACE for c in path) else path


def _user_value(user: str) -> str:
    if not user or user.startswith("-") or any(
            c in _WHITESPACE or c in '"%' or ord(c) < 32 for c in user):
        raise WrapError(f"user {user!r} cannot be given to ssh; fix the node's user")
    return user


def parse_hosts(text: str) -> dict[str, HostEntry]:
    """The hosts table: JSON {host: {"port": int, "user": str, "identity": str}}
    (each key optional). Raises WrapError naming what is wrong."""
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise WrapError(f"{ENV_HOSTS} is not JSON: {e}") from None
    if not isinstance(raw, dict):
        raise WrapError(f"{ENV_HOSTS} must be a JSON object of hosts")
    table: dict[str, HostEntry] = {}
    for host, fields in raw.items():
        if not host or not isinstance(fields, dict) or set(fields) - {"port", "user",
                                                                       "identity"}:
            raise WrapError(f"{ENV_HOSTS}: host {host!r} needs an object of port, user, "
                            "identity")
        port, user, identity = fields.get("port"), fields.get("user"), fields.get("identity")
        if port is not None and (not isinstance(port, int) or isinstance(port, bool)
                                 or not 1 <= port <= 65535):
            raise WrapError(f"{ENV_HOSTS}: host {host!r}: port must be 1-65535, not {port!r}")
        for name, value in (("user", user), ("identity", identity)):
            if value is not None and not isinstance(value, str):
                raise WrapError(f"{ENV_HOSTS}: host {host!r}: {name} must be a string")
        entry = HostEntry(port, user, identity)
        _entry_options(entry)  # refuse values ssh would misread, here already
        table[host] = entry
    return table


def _entry_options(entry: HostEntry) -> list[str]:
    opts: list[str] = []
    if entry.port is not None:
        opts += ["-o", f"Port={entry.port}"]
    if entry.user is not None:
        opts += ["-o", f"User={_user_value(entry.user)}"]
    if entry.identity is not None:
        opts += ["-o", f"IdentityFile={path_value(entry.identity, 'identity')}",
                 "-o", "IdentitiesOnly=yes"]
    return opts


# ---------------------------------------------------------------- rewrite


def rewrite(args: Sequence[str], policy: Policy) -> list[str]:
    """ssh's arguments (without the program name) -> the ones the real ssh
    gets: see the module docstring. Raises WrapError."""
    parsed = parse_ssh_args(args)
    for letter, value in parsed.options:
        if letter == "o" and value is not None and any(c in "\r\n\0" for c in value):
            raise WrapError(f"-o {value!r}: an option cannot span lines")
    host = destination_host(parsed.destination) if parsed.destination is not None else None
    entry = policy.hosts.get(host) if host is not None else None
    out: list[str] = []
    if policy.config is not None:
        out += ["-F", policy.config]
    for option in STRICT_OPTIONS:
        out += ["-o", option]
    if policy.known_hosts is not None:
        out += ["-o", f"UserKnownHostsFile={path_value(policy.known_hosts, 'known_hosts')}"]
    if entry is not None:
        out += _entry_options(entry)
    for letter, value in parsed.options:
        if _dropped(letter, value, entry is not None, policy.config is not None):
            continue
        out += [f"-{letter}"] if value is None else [f"-{letter}", value]
    if parsed.destination is not None:
        out += ["--", parsed.destination, *parsed.command]
    return out


def _dropped(letter: str, value: str | None, has_entry: bool, has_config: bool) -> bool:
    if letter in DROPPED_FLAGS or (has_entry and letter in ENTRY_FLAGS):
        return True
    if letter == "F":
        return has_config
    if letter == "o" and value is not None:
        keyword = option_keyword(value)
        return keyword in DROPPED_OPTIONS or (has_entry and keyword in ENTRY_OPTIONS)
    return False


# ---------------------------------------------------------------- secrets


def secret_command(command: Sequence[str]) -> list[str] | None:
    """For a rank's remote command (it starts `secret_exec.py rank`), the
    command that runs it with ENV_SECRETS_STDIN=1, so that the rank reads
    the job's secrets from the session's stdin; None for any other command
    (horovodrun's checks and task servers get no secrets). ssh joins the
    words with blanks for the remote shell, so the new command is that
    string run by `sh -c`, quoted once more."""
    import shlex  # here only: the other ssh calls need none of it

    joined = " ".join(command)
    if not any(mark in joined for mark in RANK_MARKS):
        return None
    return [f"env {ENV_SECRETS_STDIN}=1 sh -c {shlex.quote(joined)}"]


def read_secret_file(path: str) -> bytes:
    """The bytes of the job's secrets from the keeper's file. Raises WrapError."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SECRETS + 1)
    except OSError as e:
        raise WrapError(f"cannot read the job's secrets from {path} ({e.strerror}); the "
                        "launch (secret_exec.py hold) has ended") from None
    if len(data) > MAX_SECRETS:
        raise WrapError(f"the job's secrets in {path} are over {MAX_SECRETS} bytes")
    return data


def _stdin_from(data: bytes) -> None:
    """Make fd 0 a pipe that holds `data`, then its end (it fits: MAX_SECRETS)."""
    r, w = os.pipe()
    try:
        os.write(w, data)
    finally:
        os.close(w)
    os.dup2(r, 0)
    os.close(r)


# ---------------------------------------------------------------- the real ssh


def _is_wrapper_dir(folder: str) -> bool:
    try:
        return os.path.samefile(folder, BIN_DIR)
    except OSError:
        return False


def find_real_ssh(path: str) -> str | None:
    """The first executable `ssh` in the directories of `path` that is not
    this wrapper; relative directories are skipped (never ./ssh)."""
    for folder in path.split(os.pathsep):
        if not os.path.isabs(folder) or _is_wrapper_dir(folder):
            continue
        candidate = os.path.join(folder, "ssh")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def real_ssh(env: Mapping[str, str]) -> str:
    """The recorded real ssh if it is one (absolute, executable, not this
    wrapper), else the first one on PATH outside bin/. Raises WrapError."""
    recorded = env.get(ENV_REAL_SSH, "")
    if os.path.isabs(recorded) and os.path.isfile(recorded) and os.access(recorded, os.X_OK) \
            and not _is_wrapper_dir(os.path.dirname(recorded)):
        return recorded
    found = find_real_ssh(env.get("PATH", ""))
    if found is None:
        raise WrapError("no ssh client on PATH outside the wrapper's folder; install OpenSSH's "
                        "client on this node")
    return found


def policy_from(env: Mapping[str, str]) -> Policy:
    hosts = parse_hosts(env[ENV_HOSTS]) if env.get(ENV_HOSTS) else {}
    return Policy(hosts, env.get(ENV_KNOWN_HOSTS) or None, env.get(ENV_CONFIG) or None)


# ---------------------------------------------------------------- modes


def _say(message: str) -> None:
    print(f"llmconsole ssh: {message}", file=sys.stderr, flush=True)


def wrap(args: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    try:
        ssh = real_ssh(env)
        argv = [ssh, *rewrite(args, policy_from(env))]
        command = parse_ssh_args(args).command
        wrapped = secret_command(command) if env.get(ENV_SECRETS_FD) and command else None
        if wrapped is not None:
            # the rank reads the secrets from the session, never a command line
            _stdin_from(read_secret_file(env[ENV_SECRETS_FD]))
            argv = [*argv[:len(argv) - len(command)], *wrapped]
    except WrapError as e:
        _say(str(e))
        return 255
    try:
        os.execv(ssh, argv)  # noqa: S606 — an argv list, no shell
    except OSError as e:
        _say(f"cannot run {ssh}: {e}")
    return 255


def launch(args: Sequence[str]) -> int:
    hosts: str | None = None
    known_hosts: str | None = None
    args = list(args)
    while args and args[0] != "--":
        if args[0] in ("--hosts", "--known-hosts") and len(args) > 1:
            if args[0] == "--hosts":
                hosts = args[1]
            else:
                known_hosts = args[1]
            del args[:2]
            continue
        _say(f"launch: unknown argument {args[0]!r}")
        return 2
    program = args[1:]
    if not program:
        _say("usage: ssh.py launch [--hosts JSON] [--known-hosts FILE] -- PROGRAM [ARG...]")
        return 2
    env = dict(os.environ)
    try:
        if hosts is not None:
            parse_hosts(hosts)
            env[ENV_HOSTS] = hosts
        if known_hosts is not None:
            path_value(known_hosts, "known_hosts")
            env[ENV_KNOWN_HOSTS] = known_hosts
    except WrapError as e:
        _say(str(e))
        return 2
    path = [d for d in env.get("PATH", "").split(os.pathsep) if d and not _is_wrapper_dir(d)]
    ssh = find_real_ssh(os.pathsep.join(path))
    if ssh is None:
        _say(f"no ssh client on PATH ({os.pathsep.join(path)}); horovodrun across nodes needs "
             "OpenSSH's client on the launching node")
        return 127
    env[ENV_REAL_SSH] = ssh
    env[ENV_PYTHON] = sys.executable
    env["PATH"] = os.pathsep.join([BIN_DIR, *path])
    try:
        os.execvpe(program[0], program, env)  # noqa: S606 — an argv list, no shell
    except OSError as e:
        _say(f"cannot run {program[0]}: {e}")
    return 127


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["wrap"]:
        return wrap(argv[1:])
    if argv[:1] == ["launch"]:
        return launch(argv[1:])
    _say("usage: ssh.py launch ... -- PROGRAM [ARG...] | ssh.py wrap SSH-ARG...")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
