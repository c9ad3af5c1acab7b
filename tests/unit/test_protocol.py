"""The agent protocol, typed both ways: every command's to_wire() is read
back by parse_command as the same command, every event's to_wire() by
parse_event as the same event (through real JSON lines, as on the wire);
unknown events are kept, malformed ones refused; the hello's version is
checked."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.agent.protocol import (
    MAX_UID,
    VERSION,
    Attach,
    Command,
    Dump,
    Dumped,
    Error,
    Event,
    Exited,
    Hello,
    Log,
    Lost,
    Metric,
    Pong,
    ProtocolError,
    Reap,
    Runs,
    RunSummary,
    Simple,
    Start,
    Started,
    Stop,
    Telemetry,
    Unknown,
    VersionMismatch,
    check_hello,
    parse_command,
    parse_event,
)

attempts = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True).filter(
    lambda a: ".." not in a)
# what exec() can take: no NUL, no lone surrogate
exec_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                    max_size=20)
any_text = st.text(max_size=20)  # lone surrogates included: JSON escapes them
numbers = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-2**40, 2**40)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12)
objects = st.dictionaries(any_text, json_values, max_size=4)
offsets = st.integers(0, 2**53)
labels = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True).filter(
    lambda v: v not in (".", ".."))
opt_ints = st.none() | st.integers(-2**31, 2**31)
opt_times = st.none() | st.floats(0, 2e9)

commands = st.one_of(
    st.builds(Start, attempts,
              st.lists(exec_text, min_size=1, max_size=5).filter(lambda a: a[0] != "").map(tuple),
              st.dictionaries(exec_text.filter(lambda k: k != "" and "=" not in k), exec_text,
                              max_size=4),
              st.none() | exec_text.map(lambda p: "/" + p),
              st.lists(st.integers(0, 1024), max_size=8).map(tuple),
              st.none() | st.integers(0, MAX_UID)),
    st.builds(Stop, attempts, st.none() | st.floats(0, 86400)),
    st.builds(Attach, attempts, offsets, offsets),
    st.builds(Reap, attempts, exec_text.map(lambda p: "/" + p), st.none() | st.floats(0, 86400)),
    st.builds(Simple, st.sampled_from(["list", "ping", "shutdown"]), json_values),
    st.builds(Dump, attempts, labels, st.none() | exec_text.map(lambda p: "/" + p)),
)

runs = st.lists(st.builds(RunSummary, attempts, opt_ints, st.booleans(), st.none() | objects),
                max_size=3).map(tuple)
events = st.one_of(
    st.builds(Hello, any_text, st.integers(1, 2**22), st.integers(0, 9), any_text,
              st.none() | st.integers(1, 512), st.none() | st.floats(0, 4096),
              st.lists(objects, max_size=3).map(tuple), runs),
    st.builds(Telemetry, any_text, st.floats(0, 2e9), st.none() | st.floats(0, 100),
              st.none() | st.floats(0, 100), st.none() | st.floats(0, 4096),
              st.lists(st.none() | st.floats(0, 512), max_size=3).map(tuple),
              st.lists(objects, max_size=3).map(tuple)),
    st.builds(Started, attempts, opt_ints, opt_ints, opt_ints, opt_times),
    offsets.flatmap(lambda o: st.builds(Log, attempts, st.just(o), st.integers(o, 2**53),
                                        st.text(max_size=40))),
    offsets.flatmap(lambda o: st.builds(Metric, attempts, st.just(o), st.integers(o, 2**53),
                                        objects)),
    st.builds(Exited, attempts, opt_ints, opt_ints, opt_times),
    st.builds(Lost, attempts, any_text),
    st.builds(Error, any_text, st.none() | attempts,
              st.none() | st.sampled_from(["start", "stop", "attach"])),
    st.builds(Runs, runs),
    st.builds(Pong, json_values),
    st.builds(Dumped, attempts, st.lists(any_text, max_size=3).map(tuple),
              st.lists(any_text, max_size=3).map(tuple)),
    st.builds(Unknown, any_text.filter(lambda e: e not in {
        "hello", "telemetry", "started", "log", "metric", "exited", "lost", "error", "runs",
        "pong", "procs", "probe", "dumped"}),
        objects.map(lambda o: {k: v for k, v in o.items() if k != "ev"})),
)


def _line(wire: dict[str, Any]) -> bytes:
    """One line as the sender writes it: compact JSON, ASCII only."""
    return json.dumps(wire, separators=(",", ":")).encode("ascii") + b"\n"


@given(commands)
def test_parse_command_reads_back_every_command_it_is_sent(cmd: Command) -> None:
    assert parse_command(_line(cmd.to_wire()).rstrip(b"\n")) == cmd


@given(events)
def test_parse_event_reads_back_every_event_the_agent_writes(event: Event) -> None:
    assert parse_event(json.loads(_line(event.to_wire()))) == event


def test_a_log_line_keeps_undecodable_bytes_exactly() -> None:
    raw = b"\xff\xfe half \xe2\x82 euro \xe2\x82\xac"
    event = Log("1.1", 0, len(raw) + 1, raw.decode("utf-8", "surrogateescape"))
    line = _line(event.to_wire())
    assert b"\\udcff" in line and line.isascii()
    parsed = parse_event(json.loads(line))
    assert isinstance(parsed, Log) and parsed.line.encode("utf-8", "surrogateescape") == raw


def test_unknown_events_are_kept_not_refused() -> None:
    event = parse_event({"ev": "checkpoint", "attempt": "3.1", "step": 100})
    assert event == Unknown("checkpoint", {"attempt": "3.1", "step": 100})
    assert event.to_wire() == {"ev": "checkpoint", "attempt": "3.1", "step": 100}


def test_fields_a_known_event_does_not_define_are_ignored() -> None:
    assert parse_event({"ev": "lost", "attempt": "3.1", "reason": "gone", "new": 1}) == Lost(
        "3.1", "gone")


LOG = {"ev": "log", "attempt": "3.1", "offset": 10, "end": 20, "line": "x"}
HELLO = Hello("n1", 42, VERSION, "h", 2, 3.5, (), ()).to_wire()


@pytest.mark.parametrize(("event", "complaint"), [
    ({"attempt": "3.1"}, 'no "ev" name'),
    ({"ev": 7}, 'no "ev" name'),
    ([LOG], "not a JSON object"),
    ({**LOG, "attempt": "../etc"}, "attempt must be an attempt id"),
    ({**LOG, "offset": -1}, "offset must be an integer >= 0"),
    ({**LOG, "end": 9}, "end must be an integer >= 10"),
    ({**LOG, "offset": True}, "offset must be an integer"),
    ({**LOG, "line": None}, "line must be a string"),
    ({"ev": "metric", "attempt": "3.1", "offset": 0, "end": 5, "record": [1]},
     "record must be an object"),
    ({"ev": "exited", "attempt": "3.1", "code": "0", "signal": None, "time": None},
     "code must be an integer"),
    ({"ev": "started", "attempt": "3.1", "pid": 1.5}, "pid must be an integer"),
    ({"ev": "telemetry", "node": "n1", "time": "now", "load": [], "gpus": []},
     "time must be a number"),
    ({"ev": "telemetry", "node": "n1", "time": 1.0, "load": ["high"], "gpus": []},
     "load must be a list of numbers"),
    ({**HELLO, "version": "1"}, "version must be an integer"),
    ({**HELLO, "gpus": None}, "gpus must be a list of objects"),
    ({**HELLO, "runs": [{"attempt": "3.1", "pid": None, "alive": "yes", "exit": None}]},
     "alive must be true or false"),
    ({"ev": "error"}, "message must be a string"),
    ({"ev": "lost", "attempt": "3.1"}, "reason must be a string"),
])
def test_malformed_events_are_protocol_errors_naming_the_field(event: Any,
                                                               complaint: str) -> None:
    with pytest.raises(ProtocolError, match=complaint):
        parse_event(event)


def test_check_hello_refuses_another_version_naming_both_and_the_fix() -> None:
    check_hello(Hello("n1", 42, VERSION, "h", 2, 3.5, (), ()))
    with pytest.raises(VersionMismatch) as caught:
        check_hello(Hello("n1", 42, VERSION + 1, "h", 2, 3.5, (), ()), "gpu07")
    message = str(caught.value)
    assert f"version {VERSION + 1}" in message and f"this engine version {VERSION}" in message
    assert "gpu07" in message and "same llmconsole" in message
    assert "\n" not in message


@pytest.mark.parametrize(("wire", "complaint"), [
    ({"op": "start", "attempt": "1.1", "argv": ["x"], "uid": -1}, "uid must be null or"),
    ({"op": "start", "attempt": "1.1", "argv": ["x"], "uid": MAX_UID + 1}, "uid must be"),
    ({"op": "start", "attempt": "1.1", "argv": ["x"], "uid": True}, "uid must be"),
    ({"op": "start", "attempt": "1.1", "argv": ["x", "\udcff"]}, "not UTF-8"),
    ({"op": "start", "attempt": "1.1", "argv": ["x"], "env": {"A": "\ud800"}}, "not UTF-8"),
])
def test_start_refuses_bad_owners_and_text_exec_cannot_take(wire: dict[str, Any],
                                                           complaint: str) -> None:
    with pytest.raises(ProtocolError, match=complaint) as caught:
        parse_command(_line(wire).rstrip(b"\n"))
    assert caught.value.attempt == "1.1" and caught.value.op == "start"


@pytest.mark.parametrize(("wire", "complaint"), [
    ({"op": "reap", "attempt": "1.1"}, "run_dir must be an absolute path"),
    ({"op": "reap", "attempt": "1.1", "run_dir": "runs/1.1"}, "run_dir must be an absolute"),
    ({"op": "reap", "attempt": "1.1", "run_dir": "/r/\0"}, "NUL"),
    ({"op": "reap", "attempt": "1.1", "run_dir": "/r", "grace": -1}, "grace must be seconds"),
    ({"op": "reap", "attempt": "1.1", "run_dir": "/r", "grace": True}, "grace must be"),
])
def test_reap_refuses_what_names_no_run_directory(wire: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ProtocolError, match=complaint) as caught:
        parse_command(_line(wire).rstrip(b"\n"))
    assert caught.value.attempt == "1.1" and caught.value.op == "reap"
    with pytest.raises(ProtocolError, match="invalid attempt id"):
        parse_command(_line({"op": "reap", "attempt": "../x", "run_dir": "/r"}))


def test_procs_and_probe_round_trip_and_refuse_bad_fields() -> None:
    import json as _json

    from engine.agent.protocol import Peer, Probe, ProbeResult, Procs, ProcsResult

    for cmd in (Procs(7, "3.1", "/srv/runs/3.1"),
                Probe(8, (Peer("127.0.0.3", 2222, "root", "/k", "/kh"),))):
        assert parse_command(_json.dumps(cmd.to_wire()).encode()) == cmd
    for event in (ProcsResult(7, ({"pid": 1, "rank": 0},)),
                  ProbeResult(8, 1.5, "/srv", 12.0, ({"host": "h", "ok": True},))):
        assert parse_event(event.to_wire()) == event
    for bad in ({"op": "procs", "id": 1, "attempt": "3.1", "run_dir": "relative"},
                {"op": "procs", "id": "x", "attempt": "3.1", "run_dir": "/r"},
                {"op": "probe", "id": 1, "peers": [{"host": "-oProxyCommand=x"}]}):
        with pytest.raises(ProtocolError):
            parse_command(_json.dumps(bad).encode())


@pytest.mark.parametrize(("wire", "complaint"), [
    ({"op": "dump", "attempt": "1.1"}, "label None is not a folder name"),
    ({"op": "dump", "attempt": "1.1", "label": ""}, "not a folder name"),
    ({"op": "dump", "attempt": "1.1", "label": ".."}, "not a folder name"),
    ({"op": "dump", "attempt": "1.1", "label": "a/b"}, "not a folder name"),
    ({"op": "dump", "attempt": "1.1", "label": "x" * 65}, "not a folder name"),
    ({"op": "dump", "attempt": "1.1", "label": "a b;rm"}, "1-64 letters"),
    ({"op": "dump", "attempt": "1.1", "label": "ok", "run_dir": "rel"}, "absolute path"),
    ({"op": "dump", "attempt": "1.1", "label": "ok", "run_dir": "/r\0"}, "NUL"),
])
def test_dump_refuses_a_label_that_is_not_a_safe_folder_name(wire: dict[str, Any],
                                                             complaint: str) -> None:
    with pytest.raises(ProtocolError, match=complaint) as caught:
        parse_command(_line(wire).rstrip(b"\n"))
    assert caught.value.attempt == "1.1" and caught.value.op == "dump"
    assert parse_command(_line({"op": "dump", "attempt": "1.1", "label": "stall-1"})) == Dump(
        "1.1", "stall-1")
    with pytest.raises(ProtocolError, match="files must be a list of strings"):
        parse_event({"ev": "dumped", "attempt": "1.1", "files": [1], "errors": []})
