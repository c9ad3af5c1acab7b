"""The keyboard of k9s: the `:` command line (parsing and completion alone,
then driven in the real app against a real engine), ctrl+d, keys disabled
where they cannot apply, the `?` help toggle, keys remapped from a
keys.toml, and the job detail's Processes tab."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Input, TabbedContent
from textual.widgets._footer import FooterKey

from chaos.engine_handle import EngineHandle
from console.app import LlmConsole
from console.command_line import CommandLine
from console.commands import Command, CommandError, complete, parse
from console.compare import CompareScreen
from console.help import HelpScreen
from console.keymap import entry, load, section_of
from console.screens import ConfirmScreen, JobScreen, process_rows
from console.table import VirtualTable
from tests.console.test_app import engine, job_cells, notes, until  # noqa: F401  (engine: the fixture)

# ---------------------------------------------------------------- pure parts


def test_parse_every_command_and_refuse_bad_lines() -> None:
    assert parse(":jobs") == Command("jobs")
    assert parse("nodes") == Command("nodes")
    assert parse(":job 12") == Command("job", job_id=12)
    assert parse(":logs 3") == Command("logs", job_id=3)
    assert parse(":cancel 7") == Command("cancel", job_id=7)
    assert parse(":q") == Command("quit")
    assert parse(":submit sleep priority=5 'args.x=a b'") == Command(
        "submit", profile="sleep", overrides=("priority=5", "args.x=a b"))
    for line, said in [(":bogus", "unknown command 'bogus'"),
                       (":job", "takes one job id"), (":job x", "'x' is not a job id"),
                       (":job 0", "not a job id"), (":jobs 3", "takes no argument"),
                       (":submit", "needs a profile"),
                       (":submit sleep priority", "not an override key=value"),
                       (":submit 'sleep", "No closing quotation"), (":", "commands: :jobs")]:
        with pytest.raises(CommandError) as err:
            parse(line)
        assert said in str(err.value) and "\n" not in str(err.value), line


def test_tab_completes_commands_profiles_and_job_ids() -> None:
    names, ids = ["sleep", "smoke", "hello"], [3, 12, 15]
    assert complete(":su", names, ids) == (":submit ", ["submit"])
    assert complete(":jo", names, ids) == (":job", ["job", "jobs"])
    assert complete(":submit s", names, ids) == (":submit s", ["sleep", "smoke"])
    assert complete(":submit sl", names, ids) == (":submit sleep ", ["sleep"])
    assert complete(":logs 1", names, ids) == (":logs 1", ["15", "12"])
    assert complete(":cancel 3", names, ids) == (":cancel 3 ", ["3"])
    assert complete(":jobs x", names, ids) == (":jobs x", [])
    assert complete(":zz", names, ids) == (":zz", [])


def test_keys_file_good_unknown_clash_and_broken(tmp_path: Path) -> None:
    known = {"cancel-job": "c,ctrl+d", "retry-job": "r", "help": "question_mark"}
    path = tmp_path / "keys.toml"
    assert load(known, path) == ({}, None)  # no file: no keymap, nothing said
    path.write_text('[keys]\ncancel-job = "x"\nhelp = "?,f1"\n')
    assert load(known, path) == ({"cancel-job": "x", "help": "question_mark,f1"}, None)
    for text, said in [('[keys]\ncancle-job = "x"\n', "unknown key id 'cancle-job'"),
                       ('[keys]\ncancel-job = "r"\n', "cancel-job = 'r' clashes with retry-job"),
                       ('[keys]\nhelp = "c"\n', "help = 'c' clashes with cancel-job"),
                       ('[keys]\nretry-job = 3\n', "is not a key"),
                       ("[keys\n", "not TOML")]:
        path.write_text(text)
        keymap, problem = load(known, path)
        assert keymap == {} and problem is not None, text
        assert said in problem and str(path) in problem and "\n" not in problem, problem
        assert "default keys apply" in problem


def test_keys_file_sections_of_every_screen(tmp_path: Path) -> None:
    known = {"cancel-job": "c,ctrl+d", "help": "question_mark", "job.back": "escape,q",
             "job.charts": "2", "logs.search": "slash", "logs.next-match": "n",
             "compare.x": "x"}
    path = tmp_path / "keys.toml"
    path.write_text('[dashboard]\ncancel-job = "x"\n[job]\ncharts = "v"\n'
                    '[logs]\nsearch = "/,s"\n[compare]\nx = "t"\n')
    assert load(known, path) == ({"cancel-job": "x", "job.charts": "v",
                                  "logs.search": "slash,s", "compare.x": "t"}, None)
    path.write_text('[keys]\nhelp = "f1"\njob.charts = "v"\n')  # the first format, and within it
    assert load(known, path) == ({"help": "f1", "job.charts": "v"}, None)
    path.write_text('[compare]\nx = "c"\n[job]\ncharts = "x"\n')  # other screens: no clash
    assert load(known, path) == ({"compare.x": "c", "job.charts": "x"}, None)
    for text, said in [
            ('[jobs]\ncharts = "v"\n', "unknown section [jobs] (sections: [dashboard], [job]"),
            ('cancel-job = "x"\n', "cancel-job = 'x' is outside a section; put it under"),
            ('[job]\nchart = "v"\n', "unknown key id 'chart' in [job] (ids: back, charts)"),
            ('[logs]\ncharts = "v"\n', "unknown key id 'charts' in [logs] (ids: next-match,"),
            ('[job]\ncharts = "n"\n',  # [job] and [logs] are one screen
             "[job] charts = 'n' clashes with [logs] next-match (also 'n'); choose another key"
             " or remap [logs] next-match too"),
            ('[logs]\nsearch = "ctrl+foo"\n', "[logs] search = 'ctrl+foo' is not a key like"),
            ('[logs]\nsearch = "super+"\n', "[logs] search = 'super+' is not a key"),
            ('[job]\nback = "escape, two words"\n', "[job] back = 'escape, two words' is not"),
            ('[compare]\nx = "wibble"\n', "[compare] x = 'wibble' is not a key")]:
        path.write_text(text)
        keymap, problem = load(known, path)
        assert keymap == {} and problem is not None, text
        assert said in problem and str(path) in problem and "\n" not in problem, problem
        assert problem.endswith(f"fix {path}; the default keys apply"), problem


def test_the_readme_lists_every_binding_id_by_section() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    part = readme[readme.index("The ids: [dashboard]"):]
    part = part[:part.index("`?` shows")]
    listed: dict[str, set[str]] = {}
    for section, names in re.findall(r"\[(\w+)\]((?:\s*`[\w-]+`,?)+)", part):
        listed[section] = set(re.findall(r"`([\w-]+)`", names))
    ids = {b.id for b in [*LlmConsole.BINDINGS, *JobScreen.BINDINGS, *CompareScreen.BINDINGS]
           if isinstance(b, Binding) and b.id}
    by_section: dict[str, set[str]] = {}
    for ident in ids:
        by_section.setdefault(section_of(ident), set()).add(entry(ident).split()[-1])
    assert listed == by_section


def test_process_rows_by_rank_with_units() -> None:
    procs = [{"node": "b", "pid": 12, "rank": 1, "name": "python", "cpu_percent": 98.4,
              "rss_mb": 2048, "gpu_memory_mb": 512.0, "state": "running"},
             {"node": "a", "pid": 10, "rank": None, "name": "horovodrun", "cpu_percent": None,
              "rss_mb": 30.2, "gpu_memory_mb": None, "state": "sleeping"},
             {"node": "a", "pid": 11, "rank": 0, "name": "python", "cpu_percent": 100,
              "rss_mb": 1900, "gpu_memory_mb": 0, "state": "running"}]
    assert process_rows(procs) == [
        ("-", "10", "a", "horovodrun", "-", "30 MiB", "-", "sleeping"),
        ("0", "11", "a", "python", "100", "1.9 GiB", "0 MiB", "running"),
        ("1", "12", "b", "python", "98", "2.0 GiB", "512 MiB", "running")]


# ---------------------------------------------------------------- in the app


@pytest.fixture(autouse=True)
def no_user_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test reads its own (empty) config folder, never the user's."""
    config = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    return config / "llmconsole" / "keys.toml"


def cmdline(app: LlmConsole) -> CommandLine:
    return app.query_one("#cmdline", CommandLine)


async def type_command(pilot: Any, line: str) -> None:
    """Open the command line and type `line` after its ':'."""
    await pilot.press("colon")
    assert cmdline(pilot.app).has_class("shown") and cmdline(pilot.app).input.has_focus
    await pilot.press(*line)


def footer_key(app: LlmConsole, action: str) -> FooterKey | None:
    footer = app.screen.query_one(Footer)
    return next((k for k in footer.query(FooterKey) if k.action == action), None)


async def test_command_line_commands_completion_and_answers(engine: EngineHandle) -> None:  # noqa: F811
    running = engine.submit("sleep")
    engine.wait_state(running, ["running"])
    app = LlmConsole()
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: "running" in " ".join(job_cells(app, running)))
        line = cmdline(app)
        await type_command(pilot, "bogus")
        await pilot.press("enter")
        assert line.has_class("shown") and "unknown command 'bogus'" in line.answer_text
        line.input.value = ":no"
        await pilot.press("tab")  # completes, the focus stays
        assert line.input.value == ":nodes " and line.input.has_focus
        await pilot.press("enter")
        await until(pilot, lambda: app.query_one("#gpus", VirtualTable).has_focus)
        assert not line.has_class("shown")

        await type_command(pilot, "logs ")
        await pilot.press("tab")
        assert line.input.value == f":logs {running} "
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, JobScreen))
        assert app.screen.job_id == running  # type: ignore[attr-defined]
        assert app.screen.query_one("#tabs").active == "logs"  # type: ignore[attr-defined]
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, JobScreen))

        await type_command(pilot, "job 999")
        await pilot.press("enter")
        assert "no job 999" in line.answer_text
        line.input.value = ":submit nosuch"
        await pilot.press("enter")
        assert "nosuch" in line.answer_text and line.has_class("shown")
        line.input.value = ":submit sleep priority=5000"
        await pilot.press("enter")
        assert "priority" in line.answer_text and len(engine.json("jobs")) == 1
        line.input.value = ":submit sl"
        await pilot.press("tab")
        assert line.input.value == ":submit sleep "
        await pilot.press(*"priority=5", "enter")
        await until(pilot, lambda: "submitted job(s)" in notes(app))
        submitted = max(j["id"] for j in engine.json("jobs"))
        assert submitted != running and engine.job(submitted)["priority"] == 5

        await type_command(pilot, f"cancel {running}")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: engine.job(running)["state"] == "cancelled")
        await until(pilot, lambda: "cancelled" in " ".join(job_cells(app, running)))
        await type_command(pilot, f"cancel {running}")
        await pilot.press("enter")
        assert "has ended (cancelled)" in line.answer_text
        await pilot.press("escape")
        assert not line.has_class("shown")
        engine.cli("cancel", str(submitted))
        await type_command(pilot, "q")
        await pilot.press("enter")
        await until(pilot, lambda: not app.is_running)


async def test_ctrl_d_cancels_after_asking(engine: EngineHandle) -> None:  # noqa: F811
    job_id = engine.submit("sleep")
    engine.wait_state(job_id, ["running"])
    app = LlmConsole()
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: "running" in " ".join(job_cells(app, job_id)))
        app.select(job_id)
        await pilot.press("ctrl+d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert f"Cancel job {job_id}" in str(app.screen.query_one("#question").render())
        await pilot.press("y")
        await until(pilot, lambda: "cancelled" in " ".join(job_cells(app, job_id)))
    assert engine.job(job_id)["state"] == "cancelled"


async def test_keys_that_cannot_apply_are_disabled(engine: EngineHandle) -> None:  # noqa: F811
    ended = engine.submit("hello")
    engine.wait_state(ended, ["succeeded"])
    running = engine.submit("sleep")
    engine.wait_state(running, ["running"])
    app = LlmConsole()
    async with app.run_test(size=(160, 40)) as pilot:
        await until(pilot, lambda: "running" in " ".join(job_cells(app, running)))

        def off(action: str) -> bool:
            key = footer_key(app, action)
            return key is not None and key.has_class("-disabled")

        app.select(ended)
        await until(pilot, lambda: off("cancel_job") and off("change_priority"))
        assert not off("retry_job") and not off("show_logs")
        await pilot.press("c")
        await pilot.press("ctrl+d")
        await pilot.press("p")
        await pilot.pause(0.2)
        assert not isinstance(app.screen, ConfirmScreen) and app.screen is app.screen_stack[0]
        assert engine.job(ended)["state"] == "succeeded"

        app.select(running)
        await until(pilot, lambda: off("retry_job") and off("change_priority"))
        assert not off("cancel_job")
        attempts = engine.job(running)["attempt"]
        await pilot.press("r")
        await pilot.press("p")
        await pilot.pause(0.2)
        assert app.screen is app.screen_stack[0] and "retry" not in notes(app)
        assert engine.job(running)["attempt"] == attempts
        engine.cli("cancel", str(running))


async def test_question_mark_toggles_the_help_with_the_apps_keys_first(
        engine: EngineHandle) -> None:  # noqa: F811
    app = LlmConsole()
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.state.connected)
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        text = str(app.screen.query_one("#helptext").render())
        assert text.index("dashboard") < text.index("job detail") < text.index("command line") \
            < text.index("the focused widget")
        assert "c, ^d" in text and "Cancel" in text and ":submit PROFILE" in text
        await pilot.press("question_mark")
        await until(pilot, lambda: not isinstance(app.screen, HelpScreen))
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, HelpScreen))
        assert app.screen is app.screen_stack[0]


async def test_a_key_remapped_in_keys_toml(engine: EngineHandle, no_user_keys: Path) -> None:  # noqa: F811
    no_user_keys.parent.mkdir(parents=True)
    no_user_keys.write_text('[keys]\ncancel-job = "x"\n')
    job_id = engine.submit("sleep")
    engine.wait_state(job_id, ["running"])
    app = LlmConsole()
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: "running" in " ".join(job_cells(app, job_id)))
        app.select(job_id)
        await pilot.press("c")  # no longer cancel
        await pilot.pause(0.2)
        assert app.screen is app.screen_stack[0]
        key = footer_key(app, "cancel_job")
        assert key is not None and key.key == "x"
        await pilot.press("x")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: engine.job(job_id)["state"] == "cancelled")
        assert not app._notifications or "keys.toml" not in notes(app)


def help_row(text: str, keys: str, what: str) -> int | None:
    """Where the `?` help has the row "keys  what" first (console.help's
    layout), None where it has not."""
    found = re.search(rf"^  {re.escape(keys)} +{re.escape(what)}$", text, re.M)
    return None if found is None else found.start()


async def test_job_detail_and_logs_keys_remapped_in_keys_toml(
        engine: EngineHandle, no_user_keys: Path) -> None:  # noqa: F811
    no_user_keys.parent.mkdir(parents=True)
    no_user_keys.write_text('[job]\ncharts = "v"\n\n[logs]\nsearch = "k"\n')
    job_id = engine.submit("sleep")
    engine.wait_state(job_id, ["running"])
    app = LlmConsole()
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: "running" in " ".join(job_cells(app, job_id)))
        assert not app._notifications  # the file is good: nothing said
        app.select(job_id)
        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, JobScreen))
        screen = app.screen
        tabs, box = screen.query_one("#tabs", TabbedContent), screen.query_one("#logsearch", Input)
        assert tabs.active == "logs"
        key = footer_key(app, "search")
        assert key is not None and key.key == "k"  # the footer says the new key
        await pilot.press("slash")  # no longer search
        await pilot.pause(0.1)
        assert not box.has_focus and not box.has_class("shown")
        await pilot.press("k")
        await until(pilot, lambda: box.has_focus and box.has_class("shown"))
        await pilot.press("s", "l", "enter")  # the box takes the letters; enter: back to the log
        await until(pilot, lambda: not box.has_focus)
        assert screen.needle == "sl"  # type: ignore[attr-defined]
        await pilot.press("2")  # no longer the Charts tab
        await pilot.pause(0.1)
        assert tabs.active == "logs"
        await pilot.press("v")  # from the log, after a search (its box shown)
        await until(pilot, lambda: tabs.active == "charts")
        await pilot.pause(0.1)
        assert tabs.active == "charts"  # and it stays
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        text = str(app.screen.query_one("#helptext").render())
        charts, search = help_row(text, "v", "Charts"), help_row(text, "k", "Search logs")
        assert charts is not None and search is not None, text
        assert help_row(text, "2", "Charts") is help_row(text, "/", "Search logs") is None
        assert help_row(text, "n", "Next match") and help_row(text, "3", "History")
        assert text.index("\njob detail (d, enter)\n") < charts < text.index("\nlogs (l)\n") \
            < search < text.index("\ncompare (m)\n")  # in their screen's group
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is screen)
    engine.cli("cancel", str(job_id))


async def test_a_clash_in_the_detail_keys_is_one_line_and_the_defaults_stay(
        engine: EngineHandle, no_user_keys: Path) -> None:  # noqa: F811
    no_user_keys.parent.mkdir(parents=True)
    no_user_keys.write_text('[keys]\ncancel-job = "x"\n[logs]\nwrap = "2"\n')
    job_id = engine.submit("hello")
    engine.wait_state(job_id, ["succeeded"])
    app = LlmConsole()
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: "succeeded" in " ".join(job_cells(app, job_id)))
        said = [n.message for n in app._notifications]
        assert said == [f"{no_user_keys}: [logs] wrap = '2' clashes with [job] charts (also "
                        f"'2'); choose another key or remap [job] charts too; fix "
                        f"{no_user_keys}; the default keys apply"]
        assert app.keymap == {}  # not even the good entry: the defaults stay
        app.select(job_id)
        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, JobScreen))
        await pilot.press("2")
        await until(pilot, lambda: app.screen.query_one("#tabs", TabbedContent).active
                    == "charts")
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        text = str(app.screen.query_one("#helptext").render())
        assert help_row(text, "2", "Charts") and help_row(text, "w", "Wrap"), text


async def test_a_bad_keys_toml_is_one_line_and_the_defaults_stay(
        engine: EngineHandle, no_user_keys: Path) -> None:  # noqa: F811
    no_user_keys.parent.mkdir(parents=True)
    no_user_keys.write_text('[keys]\ncancel-jobs = "x"\n')
    job_id = engine.submit("sleep")
    engine.wait_state(job_id, ["running"])
    app = LlmConsole()
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: "running" in " ".join(job_cells(app, job_id)))
        said = [n.message for n in app._notifications]
        assert len(said) == 1 and "\n" not in said[0]
        assert said[0].startswith(f"{no_user_keys}: unknown key id 'cancel-jobs'")
        assert "cancel-job" in said[0] and f"fix {no_user_keys}" in said[0]
        app.select(job_id)
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")
        engine.cli("cancel", str(job_id))


async def test_processes_tab_lists_the_running_jobs_pid(engine: EngineHandle) -> None:  # noqa: F811
    job_id = engine.submit("sleep")
    engine.wait_state(job_id, ["running"])
    pids = {int(p["pid"]) for p in engine.json("ps", str(job_id))}
    assert pids
    app = LlmConsole()
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: "running" in " ".join(job_cells(app, job_id)))
        app.select(job_id)
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, JobScreen))
        await pilot.press("6")
        table = app.screen.query_one("#procs", DataTable)
        await until(pilot, lambda: table.row_count >= 1)
        shown = {int(str(table.get_row_at(i)[1])) for i in range(table.row_count)}
        assert shown == pids
        row = [str(c) for c in table.get_row_at(0)]
        assert row[2] and row[7]  # its node and state
        info = str(app.screen.query_one("#procsinfo").render())
        assert f"{len(pids)} process(es)" in info
        engine.cli("cancel", str(job_id))
        await until(pilot, lambda: table.row_count == 0, timeout=10)  # asked again every 2 s
        assert "no process" in str(app.screen.query_one("#procsinfo").render())
