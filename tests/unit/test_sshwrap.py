"""llmconsole's ssh for horovodrun across nodes (engine/sshwrap): the
argument rewrite as a pure function against hostile spellings, as a
property over generated command lines, and the real chain (launch ->
PATH -> bin/ssh -> the "real" ssh, here a fake that records its argv) on
horovod's own command strings."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from horovod.runner.util.remote import get_remote_command
from hypothesis import given
from hypothesis import strategies as st

from engine.sshwrap import ssh as wrapper
from engine.sshwrap.ssh import (
    HostEntry,
    Policy,
    WrapError,
    destination_host,
    option_keyword,
    parse_hosts,
    parse_ssh_args,
    rewrite,
)

SCRIPT = Path(wrapper.__file__)
NONE = Policy({})
HOST = Policy({"10.0.0.2": HostEntry(2222, "ann", "/keys/id ed25519")}, "/etc/llm/known_hosts")


def options_of(argv: list[str]) -> list[tuple[str, str | None]]:
    return parse_ssh_args(argv).options


def o_values(argv: list[str]) -> list[str]:
    return [v for letter, v in options_of(argv) if letter == "o" and v is not None]


def first_value(argv: list[str], keyword: str) -> str | None:
    """What ssh uses for `keyword`: the first -o that names it wins."""
    for value in o_values(argv):
        if option_keyword(value) == keyword.lower():
            return value.split("=", 1)[1] if "=" in value else value.split(None, 1)[1]
    return None


def assert_strict(argv: list[str]) -> None:
    assert first_value(argv, "StrictHostKeyChecking") == "yes", argv
    assert first_value(argv, "BatchMode") == "yes" and first_value(argv, "ForwardAgent") == "no"
    assert first_value(argv, "ForwardX11") == "no"
    assert first_value(argv, "ClearAllForwardings") == "yes"
    for value in o_values(argv):
        key = option_keyword(value)
        assert key != "passwordauthentication", argv
        if key == "stricthostkeychecking":
            assert value == "StrictHostKeyChecking=yes", argv
    letters = [letter for letter, _ in options_of(argv)]
    assert not set(letters) & set("AXYLRDWwS"), argv


def test_horovods_exact_commands_get_strict_host_keys_and_the_hosts_own_settings() -> None:
    for local in ("true", shlex.quote("cd /w > /dev/null 2>&1 ; env A=1 python train.py")):
        for port, identity in ((None, None), (22, "/root/.ssh/id"), (2200, None)):
            argv = shlex.split(get_remote_command(local, "10.0.0.2", port, identity, 10))[1:]
            out = rewrite(argv, HOST)
            assert_strict(out)
            assert first_value(out, "UserKnownHostsFile") == "/etc/llm/known_hosts"
            assert first_value(out, "Port") == "2222" and first_value(out, "User") == "ann"
            assert first_value(out, "IdentityFile") == '"/keys/id ed25519"'
            assert first_value(out, "IdentitiesOnly") == "yes"
            assert first_value(out, "ConnectTimeout") == "10"  # horovod's own, kept
            # horovod's -p/-i give way to the host's entry
            assert ("p", str(port)) not in options_of(out) and ("i", identity) not in \
                options_of(out)
            assert out[-3:] == ["--", "10.0.0.2", *shlex.split(local)]


@pytest.mark.parametrize("argv", [
    ["-o", "StrictHostKeyChecking=no", "h", "true"],
    ["-oStrictHostKeyChecking=no", "h", "true"],
    ["-o", "StrictHostKeyChecking no", "h", "true"],
    ["-o", "  stricthostkeychecking = no", "h", "true"],
    ["-o", '"StrictHostKeyChecking" no', "h", "true"],
    ["-o", "StrictHostKeyChecking=accept-new", "h"],
    ["-vo", "StrictHostKeyChecking=off", "h"],
    ["-vqoStrictHostKeyChecking=no", "h"],
    ["h", "-o", "StrictHostKeyChecking=no", "true"],  # options after the destination
    ["h", "-oUserKnownHostsFile=/dev/null", "-oGlobalKnownHostsFile=/dev/null", "true"],
    ["-o", "KnownHostsCommand=/bin/echo evil", "-o", "VerifyHostKeyDNS=yes", "h"],
    ["-o", "PasswordAuthentication=yes", "-o", "BatchMode=no", "h"],
    ["-A", "h"], ["-vA", "h"], ["-Ap22", "h"], ["-X", "-Y", "h"],
    ["-L", "8080:localhost:80", "-R8081:x:1", "-D", "1080", "h"],
    ["-W", "x:22", "-w", "0:0", "h"],
    ["-o", "ForwardAgent=yes", "-oForwardX11=yes", "-o", "ForwardX11Trusted yes", "h"],
    ["-o", "LocalForward 1 x:1", "-o", "RemoteForward=2 x:2", "-o", "DynamicForward=3", "h"],
    ["-o", "ClearAllForwardings=no", "-o", "PermitLocalCommand=yes", "-o",
     "LocalCommand=touch /tmp/pwned", "h"],
    ["-S", "/tmp/other-master", "-o", "ControlMaster=auto", "-o", "ControlPath=/tmp/m", "h"],
    ["-o", "ControlPersist=yes", "h"],
])
def test_hostile_spellings_are_taken_out_and_ours_come_first(argv: list[str]) -> None:
    out = rewrite(argv, NONE)
    assert_strict(out)
    parsed = parse_ssh_args(out)
    assert parsed.destination == "h"
    assert parsed.command == parse_ssh_args(argv).command
    dropped = {"stricthostkeychecking", "userknownhostsfile", "globalknownhostsfile",
               "knownhostscommand", "verifyhostkeydns", "passwordauthentication", "batchmode",
               "forwardagent", "forwardx11", "forwardx11trusted", "localforward",
               "remoteforward", "dynamicforward", "clearallforwardings", "permitlocalcommand",
               "localcommand", "controlmaster", "controlpath", "controlpersist"}
    ours = out[:out.index("--")]
    theirs = [v for v in o_values(ours)[len(wrapper.STRICT_OPTIONS):]]
    assert not [v for v in theirs if option_keyword(v) in dropped], out


def test_harmless_options_and_the_remote_command_stay_as_they_were() -> None:
    argv = ["-v", "-C", "-4", "-o", "ConnectTimeout=5", "-E", "/tmp/log", "-J", "jump",
            "ann@h", "ls", "-A", "-o", "StrictHostKeyChecking=no", "--", "x"]
    out = rewrite(argv, NONE)
    parsed = parse_ssh_args(out)
    assert parsed.destination == "ann@h"
    # after the command starts, words are the remote command's, not ssh's
    assert parsed.command == ["ls", "-A", "-o", "StrictHostKeyChecking=no", "--", "x"]
    assert [("v", None), ("C", None), ("4", None)] == [o for o in parsed.options
                                                       if o[0] in "vC4"]
    assert ("o", "ConnectTimeout=5") in parsed.options and ("J", "jump") in parsed.options
    assert ("E", "/tmp/log") in parsed.options


def test_a_host_named_like_an_option_stays_the_host() -> None:
    # after `--` ssh reads no option: "-oProxyCommand=x" is the destination
    out = rewrite(["-o", "StrictHostKeyChecking=no", "--", "-oProxyCommand=x", "-v"], NONE)
    assert out[-3:] == ["--", "-oProxyCommand=x", "-v"]
    assert_strict(out)
    assert parse_ssh_args(out).destination == "-oProxyCommand=x"
    assert parse_ssh_args(out).command == ["-v"]
    # a value that looks like a host, an option or `--` is the option's value
    parsed = parse_ssh_args(["-l", "--", "-p", "-h", "-o", "h", "cmd"])
    assert parsed.options == [("l", "--"), ("p", "-h"), ("o", "h")]
    assert parsed.destination == "cmd" and parsed.command == []
    # `--` after the destination ends the options: what follows is the command
    assert parse_ssh_args(["h", "--", "-A"]).command == ["-A"]
    assert "-A" not in rewrite(["h", "--", "-A"], NONE)[:-1]
    assert rewrite(["h", "--", "-A"], NONE)[-3:] == ["--", "h", "-A"]


def test_the_hosts_entry_is_looked_up_by_host_whatever_the_destination_says() -> None:
    for dest in ("10.0.0.2", "root@10.0.0.2", "ssh://root@10.0.0.2:22", "ssh://10.0.0.2/"):
        out = rewrite([dest, "true"], HOST)
        assert first_value(out, "Port") == "2222", dest
    assert destination_host("ssh://a@[::1]:22") == "::1"
    other = rewrite(["-p", "23", "-l", "bob", "elsewhere"], HOST)
    assert first_value(other, "Port") is None and ("p", "23") in options_of(other)
    assert ("l", "bob") in options_of(other)
    assert_strict(other)


def test_the_engines_ssh_config_replaces_the_callers() -> None:
    out = rewrite(["-F", "/tmp/theirs", "h"], Policy({}, None, "/tmp/ours"))
    assert [v for letter, v in options_of(out) if letter == "F"] == ["/tmp/ours"]
    assert ("F", "/tmp/theirs") in options_of(rewrite(["-F", "/tmp/theirs", "h"], NONE))


@pytest.mark.parametrize("argv, message", [
    (["-Z", "h"], "unknown option -Z"),
    (["--foo", "h"], "unknown option --"),
    (["h", "-o"], "option -o needs a value"),
    (["-p"], "option -p needs a value"),
    (["-o", "ForwardAgent=no\nStrictHostKeyChecking=no", "h"], "cannot span lines"),
])
def test_what_ssh_would_not_take_is_refused_in_one_line(argv: list[str], message: str) -> None:
    with pytest.raises(WrapError, match=message):
        rewrite(argv, NONE)


def test_the_hosts_table_refuses_what_ssh_would_misread() -> None:
    assert parse_hosts('{"h": {"port": 22, "user": "u", "identity": "/k"}}') == {
        "h": HostEntry(22, "u", "/k")}
    for bad in ('[]', '{"h": 1}', '{"h": {"port": 0}}', '{"h": {"port": true}}',
                '{"h": {"user": "a b"}}', '{"h": {"user": "-oProxyCommand=x"}}',
                '{"h": {"identity": "/k\\"x"}}', '{"h": {"identity": "/k${HOME}"}}',
                '{"h": {"key": "x"}}', 'nope'):
        with pytest.raises(WrapError):
            parse_hosts(bad)
    out = rewrite(["h"], Policy({"h": HostEntry(identity="/k/100%")}))
    assert first_value(out, "IdentityFile") == "/k/100%%"  # ssh expands %-tokens


# ---------------------------------------------------------- properties

SAFE = st.sampled_from([["-v"], ["-q"], ["-C"], ["-4"], ["-T"], ["-o", "ConnectTimeout=3"],
                        ["-oServerAliveInterval=5"], ["-E", "/tmp/l"], ["-c", "aes128-ctr"]])
HOSTILE = st.sampled_from([
    ["-o", "StrictHostKeyChecking=no"], ["-oStrictHostKeyChecking=no"],
    ["-o", "StrictHostKeyChecking no"], ["-oStRiCtHoStKeYcHeCkInG=No"],
    ["-o", "PasswordAuthentication=yes"], ["-A"], ["-X"], ["-Y"], ["-vA"], ["-qX"],
    ["-L", "1:h:1"], ["-R1:h:1"], ["-D", "9"], ["-o", "ForwardAgent=yes"],
    ["-o", "UserKnownHostsFile=/dev/null"], ["-S", "/tmp/m"], ["-o", "ControlMaster=yes"],
    ["-p", "1"], ["-i", "/evil"], ["-l", "mallory"], ["-o", "Port=1"],
])
WORDS = st.lists(st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=8),
                 max_size=4)


@given(before=st.lists(st.one_of(SAFE, HOSTILE), max_size=6),
       after=st.lists(st.one_of(SAFE, HOSTILE), max_size=6),
       user=st.sampled_from(["", "ann@"]), command=WORDS, dashes=st.booleans())
def test_any_mix_of_options_comes_out_strict_with_the_same_host_and_command(
        before: list[list[str]], after: list[list[str]], user: str, command: list[str],
        dashes: bool) -> None:
    argv = [w for opt in before for w in opt] + (["--"] if dashes else []) + \
        [f"{user}10.0.0.2"] + ([] if dashes else [w for opt in after for w in opt]) + command
    original = parse_ssh_args(argv)
    out = rewrite(argv, HOST)
    assert_strict(out)
    parsed = parse_ssh_args(out)
    assert parsed.destination == original.destination and parsed.command == original.command
    assert first_value(out, "Port") == "2222" and first_value(out, "User") == "ann"
    assert not {letter for letter, _ in parsed.options} & set("pli")
    kept = [o for o in original.options if o in [("v", None), ("q", None), ("C", None),
                                                  ("o", "ConnectTimeout=3")]]
    assert [o for o in parsed.options if o in kept] == kept  # harmless ones, in order
    assert rewrite(out, HOST) == out  # a second pass changes nothing


# ---------------------------------------------------------- the real chain


def fake_ssh(folder: Path) -> Path:
    """A "real ssh" that records its argv (one JSON line each) and succeeds."""
    folder.mkdir()
    record = folder / "calls.jsonl"
    script = folder / "ssh"
    script.write_text(f"#!{sys.executable}\nimport json, sys\n"
                      f"open({str(record)!r}, 'a').write(json.dumps(sys.argv) + '\\n')\n")
    script.chmod(0o755)
    return record


def run_launch(tmp_path: Path, shell_command: str, extra: list[str] | None = None,
               path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": path if path is not None else f"{tmp_path / 'fake'}:/usr/bin:/bin",
           "HOME": str(tmp_path)}
    return subprocess.run(
        [sys.executable, "-I", "-S", str(SCRIPT), "launch", *(extra or []), "--",
         "/bin/sh", "-c", shell_command],
        env=env, capture_output=True, text=True, timeout=60)


def test_horovods_command_through_the_path_reaches_the_real_ssh_strict(tmp_path: Path) -> None:
    record = fake_ssh(tmp_path / "fake")
    hosts = json.dumps({"10.0.0.2": {"port": 2222, "user": "ann", "identity": "/k/id"}})
    command = get_remote_command(shlex.quote("cd /w ; env A=1 python -c 'print(1)'"),
                                 "10.0.0.2", None, None, 10)
    check = get_remote_command("true", "10.0.0.2", None, None, 10)
    run = run_launch(tmp_path, f"{check} && {command} && echo \"$LLMCONSOLE_REAL_SSH\"",
                     ["--hosts", hosts, "--known-hosts", "/kh/known hosts"])
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(tmp_path / "fake" / "ssh")  # recorded for the job
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(calls) == 2
    for argv in calls:
        assert argv[0] == str(tmp_path / "fake" / "ssh")
        args = argv[1:]
        assert_strict(args)
        assert "StrictHostKeyChecking=no" not in args and "PasswordAuthentication=no" not in args
        assert first_value(args, "UserKnownHostsFile") == '"/kh/known hosts"'
        assert first_value(args, "Port") == "2222" and first_value(args, "IdentityFile") == "/k/id"
        assert args[args.index("--") + 1] == "10.0.0.2"
    assert calls[0][-1] == "true"
    assert calls[1][-1] == "cd /w ; env A=1 python -c 'print(1)'"


def test_without_an_ssh_client_launch_says_so_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    run = run_launch(tmp_path, "true", path=str(tmp_path / "empty"))
    assert run.returncode == 127
    assert run.stderr.count("\n") == 1 and "no ssh client on PATH" in run.stderr


def test_the_wrapper_refuses_bad_arguments_and_bad_tables_in_one_line(tmp_path: Path) -> None:
    fake_ssh(tmp_path / "fake")
    run = run_launch(tmp_path, "ssh -Z host true")
    assert run.returncode == 255 and run.stderr == \
        "llmconsole ssh: unknown option -Z in '-Z'\n"
    run = run_launch(tmp_path, "true", ["--hosts", '{"h": {"port": "22"}}'])
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "port" in run.stderr
    env = {"PATH": f"{wrapper.BIN_DIR}:/usr/bin:/bin", "LLMCONSOLE_SSHWRAP_PYTHON": ""}
    bare = subprocess.run(["ssh", "h"], env=env, capture_output=True, text=True, timeout=30)
    assert bare.returncode != 0 and "this ssh runs only under llmconsole" in bare.stderr


def test_the_wrapper_never_runs_itself_as_the_real_ssh(tmp_path: Path) -> None:
    record = fake_ssh(tmp_path / "fake")
    env = {**os.environ, "PATH": f"{wrapper.BIN_DIR}:{tmp_path / 'fake'}",
           "LLMCONSOLE_SSHWRAP_PYTHON": sys.executable,
           "LLMCONSOLE_REAL_SSH": wrapper.WRAPPER}  # a bad record: found again on PATH
    run = subprocess.run(["ssh", "h", "true"], env=env, capture_output=True, text=True,
                         timeout=30)
    assert run.returncode == 0, run.stderr
    [argv] = [json.loads(line) for line in record.read_text().splitlines()]
    assert argv[0] == str(tmp_path / "fake" / "ssh") and argv[-3:] == ["--", "h", "true"]
