"""The SSH transport and host-key trust against real sshd test hosts on
loopback: a refused host key runs nothing and says the fingerprint and the
fix, `llmconsole nodes trust` writes the key (and refuses a changed one
unless --replace), hostile strings and the engine's environment cross ssh
as they should, short commands share a master, and a hung or stopped host
ends the channel."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from chaos.hosts import SshHosts, processes_naming
from engine.agent.protocol import Start
from engine.hostkeys import HostKeyChanged, HostKeyUnknown
from engine.transport.base import AgentError
from engine.transport.ssh import (
    CONTROL_NAME_LEN,
    SERVER_ALIVE_COUNT_MAX,
    SERVER_ALIVE_INTERVAL_S,
    UNIX_SOCKET_PATH_MAX,
    SshAgentChannel,
    control_path,
    ssh_command,
)
from tests.integration.agent_driver import gone, wait_gone

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
METACHARS = REPO / "tests" / "unit" / "data" / "profiles" / "good" / "metachars.toml"
PRINT_ARGV = "import json, sys; sys.stdout.write(json.dumps(sys.argv[1:]))"


def hostile_strings(canary: Path) -> list[str]:
    """The engine tests' metacharacters (metachars.toml: its name, command
    and env), and what a remote shell or ssh itself might read."""
    meta = tomllib.loads(METACHARS.read_text())
    return [meta["name"], *meta["command"][3:], meta["env"]["WEIRD"],
            f"$(touch {canary})", f"`touch {canary}`", f"; touch {canary}", f"|| touch {canary}",
            f"-oProxyCommand=touch {canary}", "--", "-c", "~", "~/x", "~root", "$HOME", "${PATH}",
            "'", '"', "\\", "\\n", "a\nb", "a\tb", " lead and trail ", "", "*", "?", "[a]",
            "{a,b}", "!", "#not a comment", "naïve ☃ \u00e9", "%C %h %%"]


def agent_pids(root: Path) -> list[int]:
    """Agents running with this root (their own argv, not an ssh naming them)."""
    found = []
    for pid in processes_naming(str(root)):
        with contextlib.suppress(psutil.NoSuchProcess):
            argv = psutil.Process(pid).cmdline()
            if argv[1:3] == ["-m", "engine.agent"] and str(root) in argv:
                found.append(pid)
    return found


def trust_cli(hosts: SshHosts, config: Path, profile: Path, *args: str,
              home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **hosts.env(config), "LLMCONSOLE_HOME": str(home),
           "PYTHONPATH": str(REPO)}
    env.pop("LLMCONSOLE_CLUSTER", None)
    return subprocess.run([sys.executable, "-m", "engine", "nodes", "trust", *args,
                           "--cluster", str(profile)], env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def fake_key(tmp_path: Path) -> str:
    """A public key no test host has: "ssh-ed25519 AAAA..."."""
    key = tmp_path / "fake"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                   check=True, timeout=60, capture_output=True)
    return " ".join(Path(f"{key}.pub").read_text().split()[:2])


def fingerprint_of(public_key: str) -> str:
    out = subprocess.run(["ssh-keygen", "-l", "-f", "-"], input=public_key + "\n",
                         capture_output=True, text=True, check=True, timeout=30)
    return out.stdout.split()[1]


@pytest.fixture()
async def channels() -> AsyncIterator[list[SshAgentChannel]]:
    """Channels a test opened, closed at its end."""
    opened: list[SshAgentChannel] = []
    yield opened
    for ch in opened:
        await ch.close()


def channel(hosts: SshHosts, name: str, tmp_path: Path, known_hosts: Path,
            **kw: object) -> SshAgentChannel:
    return SshAgentChannel(hosts.node_spec(name, root=tmp_path / f"root-{name}"), tmp_path,
                           0.5, known_hosts=str(known_hosts),
                           ssh_config=str(hosts.ssh_config), **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------ host keys
async def test_an_unknown_host_key_is_refused_with_its_fingerprint_and_nothing_runs(
        ssh_hosts: SshHosts, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    ch = channel(ssh_hosts, "node1", tmp_path, known_hosts)
    with pytest.raises(HostKeyUnknown) as refused:
        await ch.start()
    err = refused.value
    text = str(err)
    assert err.state == "untrusted" and err.node == "node1" and "\n" not in text
    assert text.startswith("agent on node node1: host key unknown: ")
    assert f"offers ED25519 key {ssh_hosts.fingerprint('node1')}" in text
    assert str(known_hosts) in text and "run `llmconsole nodes trust node1`" in text
    assert not ch.alive and ch.hello is None
    assert not (tmp_path / "root-node1").exists() and not agent_pids(tmp_path / "root-node1")
    assert known_hosts.read_text() == ""


async def test_a_changed_host_key_is_refused_with_both_fingerprints_and_nothing_runs(
        ssh_hosts: SshHosts, tmp_path: Path) -> None:
    old = fake_key(tmp_path)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"{ssh_hosts.known_name('node1')} {old}\n")
    ch = channel(ssh_hosts, "node1", tmp_path, known_hosts)
    with pytest.raises(HostKeyChanged) as refused:
        await ch.start()
    err = refused.value
    text = str(err)
    assert err.state == "untrusted" and "\n" not in text
    assert err.offered_fingerprint == f"ED25519 key {ssh_hosts.fingerprint('node1')}"
    assert err.known_fingerprint == f"ED25519 key {fingerprint_of(old)}"
    assert ssh_hosts.fingerprint("node1") in text and fingerprint_of(old) in text
    assert "run `llmconsole nodes trust node1 --replace`" in text
    assert not (tmp_path / "root-node1").exists() and not agent_pids(tmp_path / "root-node1")


async def test_nodes_trust_writes_the_key_and_the_agent_starts(
        ssh_hosts: SshHosts, tmp_path: Path, channels: list[SshAgentChannel]) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    config = ssh_hosts.write_ssh_config(tmp_path / "ssh_config", known_hosts)
    profile = ssh_hosts.cluster_profile(tmp_path / "cluster.toml", known_hosts=known_hosts)
    fp = ssh_hosts.fingerprint("node1")

    unasked = trust_cli(ssh_hosts, config, profile, "node1", home=tmp_path)
    assert unasked.returncode == 1 and known_hosts.read_text() == ""
    assert f"offers ED25519 key {fp}" in unasked.stdout
    assert unasked.stderr.count("\n") == 1 and "--yes" in unasked.stderr

    trusted = trust_cli(ssh_hosts, config, profile, "node1", "--yes", home=tmp_path)
    assert trusted.returncode == 0, trusted.stderr
    assert f"node node1: ED25519 key {fp} written to {known_hosts}" in trusted.stdout
    assert known_hosts.read_text() == ssh_hosts.known_line("node1")

    again = trust_cli(ssh_hosts, config, profile, "node1", "--yes", "--json", home=tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {
        "node": "node1", "host": ssh_hosts.known_name("node1"), "known_hosts": str(known_hosts),
        "type": "ssh-ed25519", "fingerprint": fp, "added": False, "replaced": []}
    assert known_hosts.read_text() == ssh_hosts.known_line("node1")

    ch = channel(ssh_hosts, "node1", tmp_path, known_hosts)
    channels.append(ch)
    await ch.start()
    assert ch.hello is not None and ch.hello["node"] == "node1"


def test_nodes_trust_resolves_an_alias_of_the_ssh_config(ssh_hosts: SshHosts,
                                                         tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    config = ssh_hosts.write_ssh_config(tmp_path / "ssh_config", known_hosts)
    profile = ssh_hosts.cluster_profile(tmp_path / "cluster.toml", alias=True,
                                        known_hosts=known_hosts)
    trusted = trust_cli(ssh_hosts, config, profile, "node2", "--yes", home=tmp_path)
    assert trusted.returncode == 0, trusted.stderr
    assert known_hosts.read_text() == ssh_hosts.known_line("node2")  # [127.0.0.3]:PORT
    assert known_hosts.stat().st_mode & 0o777 == 0o600


async def test_nodes_trust_refuses_a_changed_key_unless_replace(
        ssh_hosts: SshHosts, tmp_path: Path, channels: list[SshAgentChannel]) -> None:
    old = fake_key(tmp_path)
    known_hosts = tmp_path / "known_hosts"
    other = f"[127.0.0.9]:22 {old}\n"  # another host's line stays
    known_hosts.write_text(other + f"{ssh_hosts.known_name('node1')} {old}\n")
    before = known_hosts.read_text()
    config = ssh_hosts.write_ssh_config(tmp_path / "ssh_config", known_hosts)
    profile = ssh_hosts.cluster_profile(tmp_path / "cluster.toml", known_hosts=known_hosts)

    refused = trust_cli(ssh_hosts, config, profile, "node1", "--yes", home=tmp_path)
    assert refused.returncode == 1 and known_hosts.read_text() == before
    line = refused.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert ssh_hosts.fingerprint("node1") in line and fingerprint_of(old) in line
    assert "llmconsole nodes trust node1 --replace" in line

    replaced = trust_cli(ssh_hosts, config, profile, "node1", "--replace", "--yes",
                         home=tmp_path)
    assert replaced.returncode == 0, replaced.stderr
    assert known_hosts.read_text() == other + ssh_hosts.known_line("node1")
    ch = channel(ssh_hosts, "node1", tmp_path, known_hosts)
    channels.append(ch)
    await ch.start()
    assert ch.hello is not None


def test_nodes_trust_names_what_it_cannot_trust(ssh_hosts: SshHosts, tmp_path: Path) -> None:
    profile = ssh_hosts.cluster_profile(tmp_path / "cluster.toml")
    for node, says in (("head", "head is the head node"),
                       ("nosuch", "no node nosuch in cluster test-cluster (its nodes: head, "
                                  "node1, node2)")):
        out = trust_cli(ssh_hosts, ssh_hosts.ssh_config, profile, node, "--yes", home=tmp_path)
        assert out.returncode == 1 and says in out.stderr, out.stderr
        assert out.stderr.count("\n") == 1


# ----------------------------------------------- what crosses the link
async def test_hostile_strings_reach_a_remote_process_byte_for_byte(
        ssh_hosts: SshHosts, tmp_path: Path, channels: list[SshAgentChannel]) -> None:
    canary = tmp_path / "canary"
    strings = hostile_strings(canary)
    spec = ssh_hosts.node_spec("node1", root=tmp_path / "root")
    # a short command: the argv is the remote command line itself
    out = ssh_command(spec, [sys.executable, "-c", PRINT_ARGV, *strings], home=tmp_path,
                      known_hosts=str(ssh_hosts.known_hosts),
                      ssh_config=str(ssh_hosts.ssh_config))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == strings
    # a job through the agent: argv and env travel on the agent's stdin
    ch = channel(ssh_hosts, "node1", tmp_path, ssh_hosts.known_hosts)
    channels.append(ch)
    await ch.start()
    code = ("import json, os, sys; print(json.dumps([sys.argv[1:], os.environ['WEIRD']]), "
            "flush=True)")
    weird = "".join(strings)
    await ch.send(Start("1.1", (sys.executable, "-c", code, *strings),
                        {"PATH": "/usr/bin:/bin", "WEIRD": weird}))
    lines = []
    async for ev in ch.events():
        if ev["ev"] == "log":
            lines.append(ev["line"])
        if ev["ev"] == "exited":
            assert ev["code"] == 0
            break
    assert [json.loads(line) for line in lines] == [[strings, weird]]
    assert not canary.exists()


async def test_the_engines_environment_reaches_no_node(
        ssh_hosts: SshHosts, tmp_path: Path, channels: list[SshAgentChannel],
        monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cr3t-FOO_TOKEN-value-9f2c"
    monkeypatch.setenv("FOO_TOKEN", secret)
    monkeypatch.setenv("LANG", "C.UTF-8")  # what a SendEnv LANG LC_* would carry
    ch = channel(ssh_hosts, "node1", tmp_path, ssh_hosts.known_hosts)
    channels.append(ch)
    await ch.start()
    assert ch.pid is not None and ch.hello is not None
    agent = ch.hello["pid"]
    assert agent_pids(tmp_path / "root-node1") == [agent]
    with open(f"/proc/{agent}/environ", "rb") as f:
        remote_env = dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)
    assert b"SSH_CONNECTION" in remote_env  # its environment is its login's
    assert b"FOO_TOKEN" not in remote_env and b"LANG" not in remote_env
    with open(f"/proc/{ch.pid}/environ", "rb") as f:  # ssh itself never had it
        assert secret.encode() not in f.read()
    for pid in psutil.pids():  # on no command line
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                assert secret.encode() not in f.read(), pid
        except OSError:
            continue


def test_short_commands_share_one_master_under_the_engine_home(ssh_hosts: SshHosts,
                                                               tmp_path: Path) -> None:
    home = Path(tempfile.mkdtemp(prefix="llc-", dir="/tmp"))  # as short as engine homes are
    spec = ssh_hosts.node_spec("node2")
    kw = {"home": home, "known_hosts": str(ssh_hosts.known_hosts),
          "ssh_config": str(ssh_hosts.ssh_config)}
    try:
        for _ in range(3):
            out = ssh_command(spec, ["echo", "ok"], **kw)  # type: ignore[arg-type]
            assert (out.returncode, out.stdout) == (0, b"ok\n"), out.stderr
        sockets = list((home / "ssh").iterdir())
        assert len(sockets) == 1 and sockets[0].is_socket()
        assert (home / "ssh").stat().st_mode & 0o777 == 0o700
        masters = [p for p in processes_naming(str(sockets[0])) if "[mux]" in " ".join(
            psutil.Process(p).cmdline())]
        assert len(masters) == 1
        failed = ssh_command(spec, ["sh", "-c", "echo no >&2; exit 3"], **kw)  # type: ignore[arg-type]
        assert (failed.returncode, failed.stderr) == (3, b"no\n")
        with pytest.raises(AgentError, match=r"node2: ssh to 127\.0\.0\.3 gave no answer within "
                                             r"0\.5 s"):
            ssh_command(spec, ["sleep", "5"], timeout=0.5, **kw)  # type: ignore[arg-type]
        empty = tmp_path / "empty"
        empty.write_text("")
        with pytest.raises(HostKeyUnknown, match=re.escape(ssh_hosts.fingerprint("node2"))):
            ssh_command(spec, ["echo", "never"], home=tmp_path / "other",
                        known_hosts=str(empty), ssh_config=str(ssh_hosts.ssh_config))
        longest = UNIX_SOCKET_PATH_MAX - CONTROL_NAME_LEN - len("/ssh/")
        fits = home / ("d" * (longest - len(f"{home}/")))
        assert control_path(fits) == f"{fits}/ssh/%C"  # 107 bytes with ssh's suffix
        deep = Path(f"{fits}d")
        assert control_path(deep) is None  # 108: commands go without a master
        out = ssh_command(spec, ["echo", "ok"], home=deep, known_hosts=str(ssh_hosts.known_hosts),
                          ssh_config=str(ssh_hosts.ssh_config))
        assert out.stdout == b"ok\n" and not (deep / "ssh").exists()
    finally:
        for pid in processes_naming(str(home)):
            os.kill(pid, 9)
        shutil.rmtree(home, ignore_errors=True)


async def test_an_agent_that_cannot_start_is_an_error_with_the_nodes_words(
        ssh_hosts: SshHosts, tmp_path: Path) -> None:
    spec = ssh_hosts.node_spec("node1", root=tmp_path / "root")
    bad = SshAgentChannel(dataclasses.replace(spec, python="/no/such/python"), tmp_path,
                          known_hosts=str(ssh_hosts.known_hosts),
                          ssh_config=str(ssh_hosts.ssh_config))
    with pytest.raises(AgentError) as failed:
        await bad.start()
    assert not isinstance(failed.value, (HostKeyUnknown, HostKeyChanged))
    assert "node node1: agent exited with status 127 before hello" in str(failed.value)
    assert "/no/such/python" in str(failed.value)


# ------------------------------------------------------------- faults
async def test_a_hung_link_ends_the_channel_by_keepalive(
        ssh_hosts: SshHosts, tmp_path: Path, channels: list[SshAgentChannel]) -> None:
    ch = channel(ssh_hosts, "node2", tmp_path, ssh_hosts.known_hosts)
    channels.append(ch)
    await ch.start()
    session = ssh_hosts.hang("node2", node="node2")
    try:
        t0 = time.monotonic()
        async for _ in ch.events():
            pass
        elapsed = time.monotonic() - t0
    finally:
        ssh_hosts.resume(session)
    limit = SERVER_ALIVE_INTERVAL_S * (SERVER_ALIVE_COUNT_MAX + 1)
    assert not ch.alive
    assert SERVER_ALIVE_INTERVAL_S <= elapsed <= limit + 15, elapsed  # slack: a loaded machine


async def test_a_stopped_host_ends_the_channel_and_a_crash_takes_its_jobs(
        ssh_hosts: SshHosts, tmp_path: Path, channels: list[SshAgentChannel]) -> None:
    root = tmp_path / "root"
    spec = ssh_hosts.node_spec("node2", root=root)
    ch = SshAgentChannel(spec, tmp_path, 0.5,
                         known_hosts=str(ssh_hosts.known_hosts),
                         ssh_config=str(ssh_hosts.ssh_config))
    channels.append(ch)
    try:
        await ch.start()
        await ch.send(Start("7.1", (sys.executable, "-c", "import time; print('up', flush=True);"
                                    " time.sleep(600)"), {"PATH": "/usr/bin:/bin"}))
        job = None
        async for ev in ch.events():
            if ev["ev"] == "started":
                job = ev["pid"]
            if ev["ev"] == "log":
                break
        assert job is not None and not gone(job)
        ssh_hosts.crash("node2", root)
        async for _ in ch.events():
            pass
        assert not ch.alive and await wait_gone([job])
        again = SshAgentChannel(spec, tmp_path, 0.5,
                                known_hosts=str(ssh_hosts.known_hosts),
                                ssh_config=str(ssh_hosts.ssh_config))
        with pytest.raises(AgentError, match="Connection refused"):
            await again.start()
    finally:
        ssh_hosts.start_host("node2")
    back = SshAgentChannel(spec, tmp_path, 0.5,
                           known_hosts=str(ssh_hosts.known_hosts),
                           ssh_config=str(ssh_hosts.ssh_config))
    channels.append(back)
    await back.start()
    assert back.hello is not None
    assert [r["attempt"] for r in back.hello["runs"]] == ["7.1"]
    assert not any(r["alive"] for r in back.hello["runs"])
    assert str(root) in back.argv[-1]
