"""The loss guard's and stall watch's decisions (engine.guard), the [guard]
table's one-line errors in a job profile, and the guard restart's env read
by train.py."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from engine import guard
from engine.guard import GuardError, GuardSpec, LossWatch, Trip, plan_restart
from engine.model import JobSpec
from engine.profiles import ProfileError, load_job_profile
from engine.workloads.train import guard_restart, set_aside_after


def test_nan_and_inf_trip_with_the_last_good_step() -> None:
    watch = LossWatch(GuardSpec(on_nan="restart"))
    assert watch.see(10, 2.0) is None and watch.see(20, 1.9) is None
    trip = watch.see(30, math.nan)
    assert trip == Trip("restart", "loss guard: loss was nan at step 30", 20)
    first = LossWatch(GuardSpec()).see(5, math.inf)
    assert first is not None and first.action == "fail" and first.from_start
    assert first.reason == "loss guard: loss was inf at step 5" and first.good_step is None
    # train.py writes {"loss": null, "diverged": 1} before it exits
    assert math.isnan(guard.loss_of({"step": 3, "loss": None, "diverged": 1}) or 0.0)
    assert guard.loss_of({"step": 3, "eval_loss": 1.0}) is None


def test_divergence_at_the_exact_factor_and_the_window_edge() -> None:
    spec = GuardSpec(diverge_factor=3.0, diverge_window=10, on_diverge="restart")
    watch = LossWatch(spec)
    for step in range(1, 4):
        assert watch.see(step, 1.0) is None  # smoothed 1.0 at steps 1..3
    assert watch.see(4, 2.9) is None  # the median of the last three is still 1.0
    assert watch.see(5, 2.99) is None  # median 2.9 < 3 x 1.0
    trip = watch.see(6, 3.0)  # median 2.99: not yet
    assert trip is None
    trip = watch.see(7, 3.0)  # median 3.0 = 3 x 1.0: exactly the factor trips
    assert trip is not None and trip.action == "restart" and trip.good_step == 1
    assert trip.reason == "loss guard: loss rose 3.0x over 6 steps (1 -> 3) at step 7"

    # the minimum leaves the window: a rise measured over more than
    # diverge_window steps is not a divergence
    watch = LossWatch(spec)
    for step in range(0, 4):
        watch.see(step, 1.0)  # smoothed 1.0 at steps 0..3
    for step in range(4, 14):
        watch.see(step, 2.0)
    assert watch.see(14, 3.0) is None  # step 3's 1.0 is 11 steps back: outside
    assert watch.window[0][0] == 4


def test_no_false_alarm_on_a_noisy_falling_loss() -> None:
    rng = random.Random(7)
    watch = LossWatch(GuardSpec(on_nan="restart", diverge_factor=2.0, diverge_window=50))
    for step in range(1, 2001):
        loss = 4.0 * math.exp(-step / 500) + 0.5
        noisy = loss * (1 + rng.uniform(-0.3, 0.3))  # +-30 % noise a point
        if step % 97 == 0:
            noisy *= 3  # a lone spike now and then
        assert watch.see(step, noisy) is None, step


def test_stall_rule_and_words() -> None:
    # never reported a step: the clock starts when it started running
    assert guard.stalled_for(100.0, 0.0, None, 600) is None
    assert guard.stalled_for(600.0, 0.0, None, 600) == 600
    assert guard.stalled_for(700.0, 0.0, 650.0, 60) is None
    assert guard.stalled_for(710.0, 0.0, 650.0, 60) == 60
    assert guard.stall_words(12 * 60 + 5, 800) == "stalled 12m at step 800"
    assert guard.stall_words(30, None) == "stalled 30s before its first step"
    assert guard.parse_duration("10m") == 600 and guard.parse_duration("30s") == 30
    assert guard.parse_duration(600) == 600 and guard.parse_duration("soon") is None


def test_restart_plan_scales_the_lr_and_is_bounded() -> None:
    spec = GuardSpec(on_nan="restart", max_restarts=2, lr_scale=0.5)
    trip = Trip("restart", "loss guard: loss was nan at step 120", 119)
    first = plan_restart(spec, trip, ())
    assert first is not None and first.words() == "restart 1 of 2 by loss guard: lr x0.5"
    assert first.env() == {"LLMCONSOLE_LR_SCALE": "0.5", "LLMCONSOLE_RESUME_AT_OR_BEFORE": "119"}
    second = plan_restart(spec, trip, (first,))
    assert second is not None and second.lr_scale == 0.25 and second.n == 2
    assert plan_restart(spec, trip, (first, second)) is None  # max_restarts
    assert plan_restart(spec, Trip("fail", "x", 3), ()) is None
    stall = plan_restart(spec, Trip("retry", "stall watch: stalled 10m at step 5", None,
                                    lr_scale=1.0, by="stall watch"), (first,))
    assert stall is not None and stall.lr_scale == 0.5 and stall.resume_at_or_before is None
    assert stall.words() == "restart 2 of 2 by stall watch: lr x1"


def test_spec_round_trip_and_old_specs() -> None:
    spec = JobSpec("t", "train", ("python",), guard=GuardSpec(on_nan="restart",
                                                             stall_after=600.0))
    assert JobSpec.from_dict(spec.to_dict()) == spec
    old = JobSpec("t", "train", ("python",)).to_dict()
    assert "guard" not in old and JobSpec.from_dict(old).guard is None


def _profile(tmp_path: Path, guard_toml: str, kind: str = "train",
             args: str = 'max_steps = 5\n') -> Path:
    path = tmp_path / "p.toml"
    path.write_text(f'kind = "{kind}"\n[args]\n{args}[guard]\n{guard_toml}')
    return path


def test_profile_guard_fields_and_errors(tmp_path: Path) -> None:
    spec = load_job_profile(_profile(tmp_path, 'on_nan = "restart"\ndiverge_factor = 3\n'
                                     'stall_after = "10m"\non_stall = "cancel"\n'))
    assert spec.guard == GuardSpec(on_nan="restart", diverge_factor=3.0, stall_after=600.0,
                                   on_stall="cancel")
    cases = {
        "diverge_factor = 1.0\n": "guard.diverge_factor: 1 would trip",
        "diverge_window = 1\n": "guard.diverge_window: 1 steps hold no rise",
        "lr_scale = 1.5\n": "guard.lr_scale: 1.5 is outside (0, 1]",
        "lr_scale = 0\n": "guard.lr_scale: 0 is outside (0, 1]",
        'on_nan = "retry"\n': "guard.on_nan: 'retry' is not an action",
        'stall_after = "soon"\n': "guard.stall_after: 'soon' is not a duration",
        "max_restart = 2\n": "guard.max_restart: unknown field (did you mean max_restarts?)",
    }
    for toml, line in cases.items():
        with pytest.raises(ProfileError) as err:
            load_job_profile(_profile(tmp_path, toml))
        assert line in str(err.value), (toml, str(err.value))
        assert "\n" not in str(err.value)
    with pytest.raises(ProfileError) as err:  # two bad fields: a line each
        load_job_profile(_profile(tmp_path, "lr_scale = 2\ndiverge_window = 0\n"))
    assert len(err.value.errors) == 2
    for kind, args in (("eval", ""), ("compress", 'method = "int8"\n')):
        with pytest.raises(ProfileError) as err:
            load_job_profile(_profile(tmp_path, 'on_nan = "fail"\n', kind, args))
        assert "guard: kind" in str(err.value) and "no loss to guard" in str(err.value)
    distill = load_job_profile(_profile(tmp_path, 'on_nan = "restart"\n', "compress",
                                        'method = "distill"\nmodel = "m"\n'))
    assert distill.guard == GuardSpec(on_nan="restart")  # distillation trains
    with pytest.raises(GuardError):
        guard.parse({"on_stall": "page"})


def test_train_reads_the_restart_env_and_sets_aside_newer_checkpoints(tmp_path: Path) -> None:
    assert guard_restart({}) == (1.0, None)
    assert guard_restart({"LLMCONSOLE_LR_SCALE": "0.25",
                          "LLMCONSOLE_RESUME_AT_OR_BEFORE": "100"}) == (0.25, 100)
    with pytest.raises(Exception, match="LLMCONSOLE_LR_SCALE"):
        guard_restart({"LLMCONSOLE_LR_SCALE": "2"})
    for step in (50, 100, 150):
        folder = tmp_path / "checkpoints" / f"step-{step:06d}"
        folder.mkdir(parents=True)
        (folder / "trainer.pt").write_bytes(b"")
    moved = set_aside_after(tmp_path, 100)
    assert [p.name for p in moved] == ["discarded-step-000150"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "discarded-step-000150", "step-000050", "step-000100"]


def test_the_shipped_profiles_commented_guard_is_valid(tmp_path: Path) -> None:
    shipped = Path(__file__).resolve().parents[2] / "profiles" / "pretrain-tiny.toml"
    assert load_job_profile(shipped).guard is None  # commented out: no guard as shipped
    lines, in_guard = [], False
    for line in shipped.read_text().splitlines():
        bare = line.removeprefix("# ")
        in_guard = in_guard or bare == "[guard]"
        lines.append(bare if in_guard and bare.split(" ")[0] in (*guard.FIELDS, "[guard]")
                     else line)
    uncommented = tmp_path / "pretrain-tiny.toml"
    uncommented.write_text("\n".join(lines) + "\n")
    assert load_job_profile(uncommented).guard == GuardSpec(
        on_nan="restart", diverge_factor=3.0, diverge_window=50, on_diverge="restart",
        max_restarts=2, lr_scale=0.5, stall_after=600.0, on_stall="flag")


def test_the_book_flags_a_stall_once_clears_it_and_keeps_it_on_disk(tmp_path: Path) -> None:
    from engine.guard_book import GuardBook

    notes: list[tuple[int, int, float, str]] = []
    book = GuardBook(tmp_path, on_note=lambda *note: notes.append(note))
    spec = JobSpec("t", "train", ("python",), guard=GuardSpec(stall_after=60.0))
    book.started(3, 1, spec, now=1000.0)
    assert book.watch(1059.0) == []  # loading a model: not stalled before stall_after
    book.metric(3, 1, {"step": 10, "loss": 2.0}, now=1030.0)
    assert book.watch(1089.0) == []
    stalls = book.watch(1090.0)
    assert [(s.job_id, s.number, s.last_step, s.words) for s in stalls] == [
        (3, 1, 10, "stalled 1m at step 10")]
    assert book.watch(1200.0) == []  # flagged once
    view = book.view(3, 1)
    assert view is not None and view["stalled"] == {"since": 1030.0, "last_step": 10}
    assert GuardBook(tmp_path).view(3, 1) == view  # guard.json holds it
    book.metric(3, 1, {"step": 10, "eval_loss": 2.0}, now=1210.0)  # same step: still stalled
    assert book.view(3, 1)["stalled"] is not None  # type: ignore[index]
    book.metric(3, 1, {"step": 11, "loss": 1.9}, now=1220.0)
    assert book.view(3, 1)["stalled"] is None  # type: ignore[index]
    assert [n[3] for n in notes] == ["stalled 1m at step 10", "no longer stalled: step 11"]
    book.dumped(3, 1, "n2", ("/r/stacks/l/rank-1-n2-pid42.txt",), ("pid 7: gone",), now=1230.0)
    assert notes[-1][3] == ("stack dumps: rank 1 on n2 -> /r/stacks/l/rank-1-n2-pid42.txt "
                            "(errors: pid 7: gone)")


def test_any_table_is_a_guard_or_one_line_per_bad_field() -> None:
    pool: list[object] = [None, True, 0, 1, 2, -1, 10**400, 0.5, 1.0, 3.0, math.nan, math.inf,
                          "", "10m", "fail", "restart", "flag", "retry", "x\ny", "\x00",
                          "\udcff", [1], {"a": 1}, "9" * 500 + "h", 2**70]
    keys = [*guard.FIELDS, "bogus", "on-nan", "a\nb", ""]
    rng = random.Random(13)
    for _ in range(2000):
        table = {rng.choice(keys): rng.choice(pool) for _ in range(rng.randint(0, 5))}
        try:
            spec = guard.parse(table)
        except GuardError as err:
            assert err.problems and all("\n" not in " ".join(p) and len(" ".join(p)) < 300
                                        for p in err.problems), err.problems
        else:
            assert JobSpec.from_dict(JobSpec("t", "train", ("x",), guard=spec).to_dict()) \
                .guard == spec
