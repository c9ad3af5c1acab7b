"""Host-key trust for the nodes reached over SSH: what a refusal by ssh
means, and `trust`, the one way a node's key gets into a known_hosts file.

Contract:
- ssh runs with StrictHostKeyChecking=yes (engine.transport.ssh), so a node
  whose key is not known, or not the known one, is refused by ssh itself:
  nothing runs there. `classify(stderr)` reads such a refusal: "unknown" (the
  "No ... host key is known for ..." / "Host key verification failed" lines
  without the CHANGED banner), "changed" (the "REMOTE HOST IDENTIFICATION HAS
  CHANGED" banner) or None (any other failure).
- `refusal(...)` turns that into the error the engine reports:
  `HostKeyUnknown` with the fingerprint the node offers (from `ssh-keyscan`,
  through `ssh-keygen -lf`, SHA256) and the fix, `llmconsole nodes trust
  NODE`; `HostKeyChanged` with the known fingerprint (`ssh-keygen -F` in the
  known_hosts file) and the offered one, and the fix for a reinstalled node,
  `llmconsole nodes trust NODE --replace`. Both are `AgentError`s (their
  message names the node) with `.state == "untrusted"`.
- `trust(...)` scans the node's key (the host and port that `ssh -G`
  resolves, so aliases of an ssh config work), shows its type and
  fingerprint, asks (a callback: the CLI asks y/N on the terminal), refuses a
  key that differs from the known one unless `replace` (then the old entries
  go first, with `ssh-keygen -R`), and appends the key in plain text
  (hashed host names off) to the known_hosts file: the cluster profile's
  `known_hosts` if it names one, else the first UserKnownHostsFile that ssh
  uses (normally ~/.ssh/known_hosts). The file is replaced atomically.
- How ssh is run is not decided here: callers pass the `ssh -G` command line
  (engine.transport.ssh.query_argv), with exactly the options the transport
  uses, and the environment ssh gets.

ssh-keyscan reaches the resolved host and port directly, so a node behind a
ProxyJump cannot be scanned; trust it with ssh itself (`ssh NODE` once,
comparing the fingerprint) in that case.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from engine.errors import UserError
from engine.transport.base import AgentError

KEYSCAN_TIMEOUT_S = 5  # ssh-keyscan -T: a node that answers at all answers within this
TOOL_TIMEOUT_S = 15.0  # any ssh -G, ssh-keyscan or ssh-keygen run: local work, or one scan
# The key types asked from a node, in the order ssh prefers them when no key
# is known yet (OpenSSH's default HostKeyAlgorithms).
SCAN_TYPES = ("ed25519", "ecdsa", "rsa")
_PREFERENCE = ("ED25519", "ECDSA", "RSA")

Kind = Literal["unknown", "changed"]

_CHANGED_RE = re.compile(r"REMOTE HOST IDENTIFICATION HAS CHANGED")
_UNKNOWN_RE = re.compile(r"No (\S+) host key is known for|Host key verification failed")
_UNKNOWN_TYPE_RE = re.compile(r"No (\S+) host key is known for")
_OFFERED_RE = re.compile(r"The fingerprint for the (\S+) key sent by the remote host is\s+"
                         r"(SHA256:[A-Za-z0-9+/]+)")
_FINGERPRINT_RE = re.compile(r"^(\d+) (SHA256:[A-Za-z0-9+/]+) .*\((\S+)\)$")


class HostKeyError(AgentError):
    """ssh refused the node's host key: the node is untrusted and nothing
    runs there until `llmconsole nodes trust` says otherwise."""

    state = "untrusted"

    def __init__(self, node: str, message: str) -> None:
        super().__init__(node, message)
        self.message = str(self)


class HostKeyUnknown(HostKeyError):
    """No key of this node is in the known_hosts file."""

    def __init__(self, node: str, where: str, offered: HostKey | None, known_hosts: str,
                 why_unscanned: str = "") -> None:
        self.offered = offered
        self.fix = f"llmconsole nodes trust {node}"
        key = (f"offers {offered.label} key {offered.fingerprint}" if offered is not None
               else f"offers a key that could not be fetched ({why_unscanned})")
        super().__init__(node, f"host key unknown: {where} {key}, which is not in "
                               f"{known_hosts}; if that is the node's key, run `{self.fix}`")


class HostKeyChanged(HostKeyError):
    """The node offers another key than the one known for it."""

    def __init__(self, node: str, where: str, offered: str, known: str,
                 known_hosts: str) -> None:
        self.offered_fingerprint = offered
        self.known_fingerprint = known
        self.fix = f"llmconsole nodes trust {node} --replace"
        super().__init__(node, f"host key CHANGED: {where} offers {offered} but {known_hosts} "
                               f"has {known}; someone may be intercepting the connection, or "
                               f"the node was reinstalled: if so, run `{self.fix}`")


class TrustError(UserError):
    """`nodes trust` could not, or would not, trust the key (one line)."""


@dataclass(frozen=True)
class HostKey:
    """One public host key: `type` as in known_hosts ("ssh-ed25519"), `key`
    its base64 blob, `label` ssh-keygen's name for its type ("ED25519")."""

    type: str
    key: str
    fingerprint: str
    label: str

    def line(self, name: str) -> str:
        """Its known_hosts line for host `name`, in plain text."""
        return f"{name} {self.type} {self.key}\n"


@dataclass(frozen=True)
class Target:
    """Where ssh goes for a node, as `ssh -G` resolves it: `name` is how
    known_hosts names it (HostKeyAlias, else the host, "[host]:port" off
    port 22); `files` the known_hosts files ssh reads, the first written."""

    hostname: str
    port: int
    name: str
    files: tuple[Path, ...]

    @property
    def where(self) -> str:
        return self.hostname if self.port == 22 else f"{self.hostname} port {self.port}"


# ----------------------------------------------------------------- reading
def classify(stderr: str) -> Kind | None:
    """What ssh's stderr says of the host key: "changed", "unknown" or None."""
    if _CHANGED_RE.search(stderr):
        return "changed"
    if _UNKNOWN_RE.search(stderr):
        return "unknown"
    return None


def _run(argv: Sequence[str], env: Mapping[str, str] | None, stdin: str | None = None,
         timeout: float = TOOL_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                              timeout=timeout, env=None if env is None else dict(env),
                              stdin=subprocess.DEVNULL if stdin is None else None)
    except FileNotFoundError as e:
        raise TrustError(f"cannot run {argv[0]}: not installed; install the OpenSSH "
                         f"client") from e
    except subprocess.TimeoutExpired as e:
        raise TrustError(f"{argv[0]} gave no answer within {timeout:g} s") from e


def resolve(query_argv: Sequence[str], known_hosts: str | None = None,
            env: Mapping[str, str] | None = None) -> Target:
    """`query_argv` is an `ssh -G ... HOST` command line; `known_hosts` the
    cluster profile's file, which then is the only one."""
    out = _run(query_argv, env)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise TrustError(f"ssh cannot resolve the node: {last}")
    conf: dict[str, str] = {}
    for line in out.stdout.splitlines():
        key, _, value = line.partition(" ")
        conf.setdefault(key.lower(), value.strip())
    hostname = conf.get("hostname", "")
    port = int(conf.get("port", "22") or 22)
    alias = conf.get("hostkeyalias")
    name = alias or (hostname if port == 22 else f"[{hostname}]:{port}")
    if known_hosts is not None:
        files: tuple[Path, ...] = (Path(known_hosts).expanduser(),)
    else:
        files = tuple(Path(f).expanduser() for f in conf.get("userknownhostsfile", "").split()
                      if f.lower() != "none") or (Path("~/.ssh/known_hosts").expanduser(),)
    return Target(hostname, port, name, files)


def fingerprints(lines: Sequence[tuple[str, str]], env: Mapping[str, str] | None = None
                 ) -> list[HostKey]:
    """The (type, base64 key) pairs as `HostKey`s, with their SHA256
    fingerprints from `ssh-keygen -lf -`; pairs it cannot read are left out."""
    keys = []
    for type_, blob in lines:
        out = _run(["ssh-keygen", "-l", "-E", "sha256", "-f", "-"], env,
                   stdin=f"{type_} {blob}\n")
        m = _FINGERPRINT_RE.match(out.stdout.strip())
        if out.returncode == 0 and m:
            keys.append(HostKey(type_, blob, m.group(2), m.group(3)))
    return keys


def scan(target: Target, env: Mapping[str, str] | None = None) -> list[HostKey]:
    """The keys the node offers now (ssh-keyscan), most preferred first."""
    out = _run(["ssh-keyscan", "-T", str(KEYSCAN_TIMEOUT_S), "-p", str(target.port),
                "-t", ",".join(SCAN_TYPES), target.hostname], env,
               timeout=TOOL_TIMEOUT_S + KEYSCAN_TIMEOUT_S)
    pairs = []
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and not line.startswith("#"):
            pairs.append((parts[1], parts[2]))
    keys = fingerprints(pairs, env)
    return sorted(keys, key=lambda k: _rank(k.label))


def _rank(label: str) -> int:
    return _PREFERENCE.index(label) if label in _PREFERENCE else len(_PREFERENCE)


def known(target: Target, env: Mapping[str, str] | None = None) -> list[HostKey]:
    """The keys the known_hosts files hold for the node (`ssh-keygen -F`,
    hashed entries included; @cert-authority and @revoked lines left out)."""
    pairs = []
    for path in target.files:
        if not path.is_file():
            continue
        out = _run(["ssh-keygen", "-F", target.name, "-f", str(path)], env)
        for line in out.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 3 and not line.startswith(("#", "@")):
                pairs.append((parts[1], parts[2]))
    return fingerprints(pairs, env)


# ------------------------------------------------------------ the refusal
def refusal(node: str, stderr: str, query_argv: Sequence[str], known_hosts: str | None = None,
            env: Mapping[str, str] | None = None) -> HostKeyError | None:
    """The error for ssh's host-key refusal in `stderr` (None if it is some
    other failure). Never raises: what cannot be looked up is said so."""
    kind = classify(stderr)
    if kind is None:
        return None
    try:
        target = resolve(query_argv, known_hosts, env)
    except TrustError as e:
        where, file = "the node", known_hosts or "known_hosts"
        if kind == "changed":
            return HostKeyChanged(node, where, "another key", f"a known key ({e})", file)
        return HostKeyUnknown(node, where, None, file, str(e))
    file = str(target.files[0])
    if kind == "changed":
        m = _OFFERED_RE.search(stderr)
        label = m.group(1) if m else None
        offered = f"{m.group(1)} key {m.group(2)}" if m else None
        try:
            old = known(target, env)
            if offered is None:
                new = scan(target, env)
                label = next((k.label for k in new if k.label in {o.label for o in old}), None)
                offered = next((f"{k.label} key {k.fingerprint}" for k in new
                                if k.label == label), "a key that could not be fetched")
        except TrustError as e:
            old, offered = [], offered or f"a key that could not be fetched ({e})"
        same = [k for k in old if k.label == label] or old
        known_text = (" and ".join(f"{k.label} key {k.fingerprint}" for k in same)
                      or "another key")
        return HostKeyChanged(node, target.where, offered, known_text, file)
    m = _UNKNOWN_TYPE_RE.search(stderr)
    try:
        keys = scan(target, env)
    except TrustError as e:
        return HostKeyUnknown(node, target.where, None, file, str(e))
    pick = next((k for k in keys if m and k.label == m.group(1)), keys[0] if keys else None)
    return HostKeyUnknown(node, target.where, pick, file, "ssh-keyscan got no key")


# ------------------------------------------------------------------- trust
@dataclass(frozen=True)
class Trusted:
    """What `trust` did: `key` is in `file` for `name` (`added` False when it
    already was)."""

    node: str
    name: str
    where: str
    file: str
    key: HostKey
    added: bool
    replaced: tuple[HostKey, ...] = ()


def trust(node: str, query_argv: Sequence[str], *, known_hosts: str | None = None,
          replace: bool = False, confirm: Callable[[str], bool],
          env: Mapping[str, str] | None = None) -> Trusted:
    """Scan the node's key and write it to the known_hosts file once
    `confirm(question)` says yes. TrustError (one line) when the node cannot
    be scanned, the user says no, or the key differs from the known one and
    `replace` is not set."""
    target = resolve(query_argv, known_hosts, env)
    offered = scan(target, env)
    if not offered:
        raise TrustError(f"node {node}: ssh-keyscan got no host key from {target.where}; "
                         f"check that the node is up and its sshd answers there")
    old = known(target, env)
    by_label = {k.label: k for k in offered}
    for k in old:
        if by_label.get(k.label) == k:
            return Trusted(node, target.name, target.where, str(target.files[0]), k, False)
    pick = offered[0]
    stale = tuple(old)
    if stale and not replace:
        known_text = ", ".join(f"{k.label} key {k.fingerprint}" for k in stale)
        raise TrustError(f"node {node}: {target.where} offers {pick.label} key "
                         f"{pick.fingerprint}, but {target.files[0]} has {known_text} for it; "
                         f"if the node was reinstalled, run `llmconsole nodes trust {node} "
                         f"--replace`")
    question = (f"node {node} ({target.where}) offers {pick.label} key {pick.fingerprint}"
                + (f", replacing {', '.join(k.fingerprint for k in stale)}" if stale else "")
                + f"; trust it (written to {target.files[0]})?")
    if not confirm(question):
        raise TrustError(f"node {node}: key not trusted; nothing was written")
    path = target.files[0]
    if stale:
        for f in target.files:
            if f.is_file():
                _run(["ssh-keygen", "-R", target.name, "-f", str(f)], env)
    _append(path, pick.line(target.name))
    return Trusted(node, target.name, target.where, str(path), pick, True, stale)


def _append(path: Path, line: str) -> None:
    """Append `line` to `path`, replacing the file atomically (its mode kept;
    a new file is 0600 in a 0700 folder)."""
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        old = path.read_bytes()
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        old, mode = b"", 0o600
    if old and not old.endswith(b"\n"):
        old += b"\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(old + line.encode())
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
