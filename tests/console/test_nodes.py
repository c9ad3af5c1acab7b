"""The cluster on the screen, against a real engine daemon (and real sshd
test hosts on loopback for host keys): each node's state in words in the GPU
panel, drain and undrain (D, U), `nodes check` (C) and trusting a node's
host key (T), the engine's refusals as notifications; every job and node
state readable under NO_COLOR; a CPU-only node's history."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.segment import Segment
from rich.style import Style
from textual.color import Color
from textual.filter import Monochrome
from textual.widgets import DataTable, Input, Static

from chaos.engine_handle import EngineHandle, kill_marked, new_engine
from chaos.hosts import SshHosts
from console.app import NODE_STYLE, NODES_REFRESH_S, STATE_STYLE, LlmConsole
from console.bridge import FixedBridge, Snapshot
from console.help import HelpScreen
from console.screens import MAX_DRAIN_REASON, CheckScreen, ConfirmScreen, ReasonScreen
from console.state import HISTORY_POINTS, ConsoleState, spark
from console.table import VirtualTable
from engine.runtime import MAX_DRAIN_REASON as ENGINE_MAX_DRAIN_REASON
from tests.console.test_app import job_cells, notes, until
from tests.integration.test_owner import AS_NOBODY, NOBODY, NOBODY_PYTHONPATH, python_for_nobody

#: Where no test host listens (the hosts count up from 127.0.0.2): a node
#: there is refused at once, so it is down.
NOWHERE = "127.0.0.254"
#: An engine retries a node it could not reach with backoff capped at 30 s;
#: after a trust the node comes up at the next try.
RECONNECT_S = 60.0


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[EngineHandle]:
    """A daemon on the default cluster (this machine alone, node "local")."""
    handle = new_engine()
    monkeypatch.setenv("LLMCONSOLE_HOME", str(handle.home))
    monkeypatch.delenv("LLMCONSOLE_SOCKET", raising=False)
    handle.cli("engine", "start")
    try:
        yield handle
    finally:
        handle.close()
        shutil.rmtree(handle.home, ignore_errors=True)


def gpu_rows(app: LlmConsole) -> dict[str, str]:
    """Each GPU panel row's NODE cell, by row key."""
    table = app.query_one("#gpus", VirtualTable)
    return {key: table.row_text(key)[0] for key in table.keys}


def node_cell(app: LlmConsole, node: str) -> str:
    return " ".join(cell for key, cell in gpu_rows(app).items()
                    if key.split("\0")[0] == node)


def node_text(app: LlmConsole) -> str:
    return str(app.query_one("#nodeline", Static).render())


async def to_gpu_panel(pilot: object, node: str) -> None:
    """Tab to the GPU panel and walk its cursor down to `node`'s first row,
    as a user would."""
    app = pilot.app  # type: ignore[attr-defined]
    table = app.query_one("#gpus", VirtualTable)
    if not table.has_focus:
        await pilot.press("tab")  # type: ignore[attr-defined]
    assert table.has_focus
    await pilot.press("home")  # type: ignore[attr-defined]
    for _ in range(len(table.keys)):
        if (table.cursor_key or "").split("\0")[0] == node:
            break
        await pilot.press("down")  # type: ignore[attr-defined]
    assert (table.cursor_key or "").split("\0")[0] == node
    await until(pilot, lambda: node_text(app).startswith(f"node {node}:"))


async def test_drain_asks_why_then_the_row_says_drained_and_undrain_brings_it_back(
        engine: EngineHandle) -> None:
    assert MAX_DRAIN_REASON == ENGINE_MAX_DRAIN_REASON  # the box takes what the engine does
    app = LlmConsole()
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: "local up" in node_cell(app, "local"))
        await to_gpu_panel(pilot, "local")
        assert node_text(app).startswith("node local: up | not checked")

        await pilot.press("D")
        await until(pilot, lambda: isinstance(app.screen, ReasonScreen))
        await pilot.press("escape")  # changed one's mind: nothing sent
        await until(pilot, lambda: not isinstance(app.screen, ReasonScreen))

        await pilot.press("D")
        await until(pilot, lambda: isinstance(app.screen, ReasonScreen))
        app.screen.query_one(Input).value = "disk swap [b]now"
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "Drain node local (disk swap [b]now)?" in str(
            app.screen.query_one("#question", Static).render())
        await pilot.press("n")
        await pilot.pause(0.3)
        assert engine.json("nodes")[0]["state"] == "up"

        await pilot.press("D")
        await until(pilot, lambda: isinstance(app.screen, ReasonScreen))
        app.screen.query_one(Input).value = "disk swap [b]now"
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: "local DRAINED" in node_cell(app, "local"))
        await until(pilot, lambda: "drained: disk swap [b]now" in node_text(app))
        assert "node local: DRAINED" in notes(app)
        view = engine.json("nodes")[0]
        assert (view["state"], view["drain_reason"]) == ("drained", "disk swap [b]now")
        assert "0/1 nodes up" in str(app.query_one("#status", Static).render())

        await pilot.press("U")
        await until(pilot, lambda: "local up" in node_cell(app, "local"))
        assert node_text(app).startswith("node local: up")
        assert engine.json("nodes")[0]["state"] == "up"
        await pilot.press("U")  # not drained: said so, nothing sent
        await until(pilot, lambda: "node local is not drained" in notes(app))


async def test_check_runs_nodes_check_and_lists_every_check_in_a_dialog(
        engine: EngineHandle) -> None:
    app = LlmConsole()
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.state.connected)
        await pilot.press("C")
        await until(pilot, lambda: isinstance(app.screen, CheckScreen), timeout=120)
        table = app.screen.query_one("#checktable", DataTable)
        rows = [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]
        assert [r[1] for r in rows] == ["link", "host key", "software", "gpus", "disk",
                                        "clock"]
        assert {r[0] for r in rows} == {"local"} and {r[2] for r in rows} == {"ok"}
        assert "free under" in rows[4][3]
        assert "every check passed" in str(app.screen.query_one("#verdict", Static).render())
        assert "nodes check: every check passed" in notes(app)
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, CheckScreen))
        # the engine's "nodes-checked" event: the nodes are fetched again
        await until(pilot, lambda: "| check ok " in node_text(app))
        # and every few seconds: the round trip of the engine's pings (every 5 s)
        await until(pilot, lambda: node_cell(app, "local").endswith("ms"),
                    timeout=3 * NODES_REFRESH_S)
        assert "| rtt " in node_text(app)


@pytest.fixture
def nobodys_engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[EngineHandle]:
    """A daemon run by uid 65534, its socket open to everyone: root, who
    runs the screen, is neither its owner nor an admin."""
    handle = new_engine(traversable=True)
    handle.env["PYTHONPATH"] = NOBODY_PYTHONPATH
    for path in (handle.home, handle.profiles):
        os.chown(path, NOBODY, NOBODY)
    monkeypatch.setenv("LLMCONSOLE_HOME", str(handle.home))
    monkeypatch.delenv("LLMCONSOLE_SOCKET", raising=False)
    try:
        handle.serve("--socket-mode", "666", prefix=AS_NOBODY, python=python_for_nobody())
        yield handle
        handle.cli("engine", "stop", prefix=AS_NOBODY, python=python_for_nobody())
    finally:
        handle.close()
        kill_marked(str(handle.home))
        shutil.rmtree(handle.home, ignore_errors=True)


async def test_a_drain_the_engine_refuses_shows_its_reason(
        nobodys_engine: EngineHandle) -> None:
    app = LlmConsole()
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: "local up" in node_cell(app, "local"))
        await to_gpu_panel(pilot, "local")
        await pilot.press("D")
        await until(pilot, lambda: isinstance(app.screen, ReasonScreen))
        await pilot.press("enter")  # no reason: allowed
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: "drain node local: only the engine's owner (nobody) or an "
                                   "admin" in notes(app))
        assert nobodys_engine.json("nodes")[0]["state"] == "up"
        assert "local up" in node_cell(app, "local")


# ------------------------------------------------------------ host keys
@pytest.fixture(scope="module")
def ssh_host() -> Iterator[SshHosts]:
    """One real sshd test host, node1 on 127.0.0.2."""
    with SshHosts.start(1) as hosts:
        yield hosts


def nothing_listens(address: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((address, port)) != 0


@pytest.fixture
def cluster(ssh_host: SshHosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
            ) -> Iterator[tuple[EngineHandle, Path]]:
    """A daemon on a cluster of the head node, node1 (a real sshd whose key
    is not in the cluster's known_hosts, which starts empty) and "gone" (an
    address where nothing answers); the screen's process sees the same
    cluster profile and ssh config, as a user's shell would."""
    assert nothing_listens(NOWHERE, ssh_host.port)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    handle = new_engine()
    profile = ssh_host.cluster_profile(handle.home / "cluster.toml", known_hosts=known_hosts,
                                       roots=handle.home / "nodes")
    with profile.open("a") as f:
        f.write(f'\n[[nodes]]\nname = "gone"\nhost = "{NOWHERE}"\nport = {ssh_host.port}\n'
                f'root = {json.dumps(str(handle.home / "nodes" / "gone"))}\n')
    env = {**ssh_host.env(), "LLMCONSOLE_CLUSTER": str(profile)}
    handle.env.update(env)
    for name, value in {**env, "LLMCONSOLE_HOME": str(handle.home)}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("LLMCONSOLE_SOCKET", raising=False)
    handle.cli("engine", "start")
    try:
        yield handle, known_hosts
    finally:
        handle.close()
        shutil.rmtree(handle.home, ignore_errors=True)


async def test_every_node_state_in_words_under_no_color_and_trust_writes_the_key(
        cluster: tuple[EngineHandle, Path], ssh_host: SshHosts,
        monkeypatch: pytest.MonkeyPatch) -> None:
    engine, known_hosts = cluster
    engine.cli("nodes", "drain", "head", "--reason", "maintenance")
    monkeypatch.setenv("NO_COLOR", "1")
    app = LlmConsole()
    async with app.run_test(size=(80, 24)) as pilot:
        assert app.no_color
        await until(pilot, lambda: "head DRAINED" in node_cell(app, "head")
                    and "gone DOWN" in node_cell(app, "gone")
                    and "node1 UNTRUSTED" in node_cell(app, "node1"))
        await to_gpu_panel(pilot, "head")
        await pilot.press("T")  # the head node's key is not refused: said so
        await until(pilot, lambda: "T trusts the key of an UNTRUSTED node" in notes(app))

        await to_gpu_panel(pilot, "node1")
        assert "| host key unknown:" in node_text(app)
        fingerprint = ssh_host.fingerprint("node1")
        await pilot.press("T")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), timeout=60)
        question = str(app.screen.query_one("#question", Static).render())
        assert question.startswith("Trust node node1's host key?")
        assert f"ED25519 key {fingerprint}" in question and question.endswith("? y/N")
        await pilot.press("n")
        await until(pilot, lambda: "key not trusted; nothing was written" in notes(app))
        assert known_hosts.read_text() == ""

        await pilot.press("T")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), timeout=60)
        await pilot.press("y")
        await until(pilot, lambda: f"node node1: ED25519 key {fingerprint} written to "
                                   f"{known_hosts}" in notes(app), timeout=60)
        assert known_hosts.read_text() == ssh_host.known_line("node1")
        # the engine connects at its next try; nothing else was needed
        await until(pilot, lambda: "node1 up" in node_cell(app, "node1"), timeout=RECONNECT_S)


async def test_a_changed_host_key_is_said_and_trust_replaces_it(
        cluster: tuple[EngineHandle, Path], ssh_host: SshHosts, tmp_path: Path) -> None:
    engine, known_hosts = cluster
    engine.cli("engine", "stop")
    other = tmp_path / "other_key"  # as if node1 had been reinstalled since it was trusted
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
                   check=True, capture_output=True, timeout=30)
    old_key = " ".join(Path(f"{other}.pub").read_text().split()[:2])
    known_hosts.write_text(f"{ssh_host.known_name('node1')} {old_key}\n")
    engine.cli("engine", "start")
    app = LlmConsole()
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: "node1 UNTRUSTED" in node_cell(app, "node1"), timeout=60)
        await to_gpu_panel(pilot, "node1")
        assert "host key CHANGED" in node_text(app)
        await pilot.press("T")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), timeout=60)
        question = str(app.screen.query_one("#question", Static).render())
        assert "host key CHANGED since it was trusted" in question and "replacing" in question
        await pilot.press("y")
        await until(pilot, lambda: "written to" in notes(app), timeout=60)
        assert known_hosts.read_text() == ssh_host.known_line("node1")


async def test_the_node_keys_are_in_the_palette_and_the_help_only_on_the_dashboard() -> None:
    app = LlmConsole(bridge=FixedBridge([Snapshot([{"name": "n1", "up": True, "gpus": [],
                                                   "jobs": []}], [])]))
    node_keys = {"drain-node": "D", "undrain-node": "U", "check-nodes": "C",
                 "trust-node": "T"}
    async with app.run_test(size=(80, 24)) as pilot:
        app.drain()
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert {"Drain (D)", "Undrain (U)", "Check (C)", "Trust (T)"} <= set(titles)
        bindings = {b.binding.id: key for key, b in app.screen.active_bindings.items()}
        assert {i: bindings.get(i) for i in node_keys} == node_keys  # what ? lists
        await pilot.press("question_mark")  # the app's own help (console.help)
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        helptext = str(app.screen.query_one("#helptext").render())
        assert all(f"  {k}  " in helptext for k in node_keys.values()), helptext
        app.push_screen(CheckScreen([]))
        await until(pilot, lambda: isinstance(app.screen, CheckScreen))
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert not {"Drain (D)", "Check (C)"} & set(titles)
        await pilot.press("C")  # not on another screen
        await pilot.pause(0.2)
        assert "checking" not in notes(app)


def luminance(color: Color) -> float:
    """WCAG relative luminance."""
    def channel(value: int) -> float:
        v = value / 255
        return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4
    return 0.2126 * channel(color.r) + 0.7152 * channel(color.g) + 0.0722 * channel(color.b)


def contrast(style: Style) -> float:
    """WCAG contrast of a drawn style's text on its background."""
    fg, bg = Color.from_rich_color(style.color), Color.from_rich_color(style.bgcolor)
    if style.reverse:
        fg, bg = bg, fg
    light, dark = sorted((luminance(fg), luminance(bg)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def as_shown(app: LlmConsole, segments: list[Segment]) -> list[Segment]:
    """Segments as the terminal gets them: through the app's filters (under
    NO_COLOR Textual's Monochrome, which keeps only brightness)."""
    for line_filter in app._filters:
        segments = line_filter.apply(segments, app.screen.styles.background)
    return segments


def drawn(app: LlmConsole, table: VirtualTable, key: str, word: str) -> Style:
    """The style `word` is drawn in on `key`'s row of `table`, as shown."""
    y = table.keys.index(key) - round(table.scroll_offset.y) + 1
    found = [s for s in as_shown(app, list(table.render_line(y))) if word in s.text]
    assert found, (key, word)
    assert found[0].style is not None
    return found[0].style


async def test_every_job_and_node_state_reads_under_no_color(
        engine: EngineHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    engine.write_profile("fails", 'kind = "command"\ncommand = ["false"]\n')
    failed = engine.submit("fails")
    engine.wait_state(failed, ["failed"])
    ok = engine.submit("hello")
    engine.wait_state(ok, ["succeeded"])
    monkeypatch.setenv("NO_COLOR", "1")
    app = LlmConsole()
    async with app.run_test(size=(120, 40)) as pilot:
        assert app.no_color and any(isinstance(f, Monochrome) for f in app._filters)
        jobs = app.query_one("#jobs", VirtualTable)
        await until(pilot, lambda: "failed" in job_cells(app, failed)
                    and "succeeded" in job_cells(app, ok))
        gpus = app.query_one("#gpus", VirtualTable)
        await until(pilot, lambda: any(" up" in c for c in gpu_rows(app).values()))
        for on_cursor in (False, True):  # the failed job off the cursor, then on it
            app.select(ok if not on_cursor else failed)
            await pilot.pause(0.1)
            assert (jobs.cursor_key == str(failed)) is on_cursor
            style = drawn(app, jobs, str(failed), "failed")
            assert style.bold and contrast(style) >= 4.5, (on_cursor, style)
        assert contrast(drawn(app, jobs, str(ok), "succeeded")) >= 4.5
        assert contrast(drawn(app, gpus, gpus.keys[0], " up")) >= 4.5

        # every style, on every kind of row: plain, zebra, the cursor focused and not
        base = jobs.rich_style
        rows = {"plain": base, "zebra": base + jobs.get_component_rich_style("vtable--even"),
                "cursor": base + jobs.get_component_rich_style("vtable--cursor")}
        jobs.blur()
        await pilot.pause(0.1)
        rows["cursor, blurred"] = base + jobs.get_component_rich_style("vtable--cursor")
        assert len({str(r) for r in rows.values()}) == 4
        for word, style in [*STATE_STYLE.items(), *NODE_STYLE.items()]:
            for row, background in rows.items():
                [shown] = as_shown(app, [Segment(word, background + Style.parse(style))])
                assert shown.style is not None
                least = 3.0 if row.startswith("cursor") else 4.5  # WCAG AA: large / body text
                assert contrast(shown.style) >= least, (word, style, row, shown.style)


def test_cpu_history_is_kept_as_the_gpus_from_telemetry() -> None:
    state = ConsoleState()
    values = [10.0, 95.5, 50.0] + [float(i % 100) for i in range(HISTORY_POINTS + 5)]
    state.apply([{"type": "telemetry", "node": "n1", "cpu_percent": values[0]},
                 {"type": "telemetry", "node": "n1", "rtt_ms": 3.0},  # no CPU: no sample
                 {"type": "telemetry", "node": "n1", "cpu_percent": None}]
                + [{"type": "telemetry", "node": "n1", "cpu_percent": v} for v in values[1:]])
    assert list(state.cpu_history["n1"]) == values[-HISTORY_POINTS:]  # a minute at 1 Hz
    state.load_nodes([{"name": "n1", "up": True, "gpus": [], "jobs": []}])
    assert list(state.cpu_history["n1"]) == values[-HISTORY_POINTS:]  # kept over a reload


async def test_a_cpu_only_nodes_row_has_its_cpu_history(
        engine: EngineHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []  # the CPU of every telemetry event the screen applied
    telemetry = ConsoleState._telemetry

    def record(self: ConsoleState, event: dict[str, object]) -> None:
        if event.get("node") == "local" and isinstance(event.get("cpu_percent"), int | float):
            seen.append(float(event["cpu_percent"]))  # type: ignore[arg-type]
        telemetry(self, event)

    monkeypatch.setattr(ConsoleState, "_telemetry", record)
    app = LlmConsole()
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.query_one("#gpus", VirtualTable)

        def cpu_row() -> list[str]:
            rows = [table.row_text(k) for k in table.keys if table.row_text(k)[1] == "cpu"]
            return rows[0] if rows else []

        await until(pilot, lambda: len(seen) >= 3 and cpu_row() != [])
        await pilot.pause(0.3)  # drawn at the next drain
        history = cpu_row()[-1].strip()
        assert history and history == spark(seen), (history, seen)
        assert list(app.state.cpu_history["local"]) == seen[-HISTORY_POINTS:]
        count = len(seen)
        await until(pilot, lambda: len(seen) > count)  # the next sample moves it on
        await pilot.pause(0.3)
        assert cpu_row()[-1].strip() == spark(seen) and len(spark(seen)) == min(12, len(seen))
