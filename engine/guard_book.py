"""What the loss guard and the stall watch know about each job, kept in
``<engine home>/guard.json`` (written atomically: a temporary file, then
rename) so that it survives an engine restart: each attempt's trip (the
guard's verdict, saved the moment it is made, before the attempt is
stopped), each guard restart (the attempt it made, its lr multiplier and
the step it resumes at or before: what `launch_env` gives that attempt's
processes, also when it is launched again after an engine restart), the
stalled flags and the guard's notes (flagged, stack dumps, cleared).

The store has no column for any of this (it belongs to another module): the
state is here. Each note also goes to `on_note` (the runtime makes it an
event of the job's history, `Store.note`, so `show` and the screen's history
list it once), and the job view shows the notes too (`view`). The decisions
are `engine.guard`'s; the runtime calls this with the metric points and the
clock and applies what comes back.
Per-attempt loss windows are in memory only: after an engine restart the
window fills again from the points that arrive.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine import guard
from engine.guard import GuardSpec, LossWatch, Restart, Trip
from engine.model import JobSpec

FILE = "guard.json"
MAX_NOTES = 50  # per job: the oldest go first
log = logging.getLogger("llmconsole.engine")


@dataclass
class _Watch:
    """One running attempt of a guarded job, in memory."""

    spec: GuardSpec
    running_since: float
    loss: LossWatch
    last_step: int | None = None
    last_advance: float | None = None


@dataclass
class Stall:
    job_id: int
    number: int
    seconds: float
    last_step: int | None
    words: str


@dataclass
class GuardBook:
    home: Path
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    watches: dict[tuple[int, int], _Watch] = field(default_factory=dict)
    changed: set[int] = field(default_factory=set)  # jobs whose view changed: publish them
    #: (job, attempt, time, text) of each note, as it is made
    on_note: Callable[[int, int, float, str], None] | None = None

    def __post_init__(self) -> None:
        try:
            doc = json.loads((self.home / FILE).read_text())
        except (OSError, ValueError):
            doc = {}
        jobs = doc.get("jobs") if isinstance(doc, dict) else None
        self.jobs = {str(k): v for k, v in jobs.items() if isinstance(v, dict)} \
            if isinstance(jobs, dict) else {}

    def _save(self) -> None:
        path = self.home / FILE
        tmp = path.with_name(FILE + ".tmp")
        try:
            tmp.write_text(json.dumps({"version": 1, "jobs": self.jobs}, indent=1))
            os.replace(tmp, path)
        except OSError as err:
            log.warning("guard: cannot save %s: %s", path, err)

    def _job(self, job_id: int) -> dict[str, Any]:
        return self.jobs.setdefault(str(job_id), {})

    def _note(self, job_id: int, number: int, now: float, text: str) -> None:
        notes = self._job(job_id).setdefault("notes", [])
        notes.append({"attempt": number, "time": now, "text": text})
        del notes[:-MAX_NOTES]
        self.changed.add(job_id)
        self._save()
        if self.on_note is not None:
            self.on_note(job_id, number, now, text)

    # ------------------------------------------------------------ watching
    def started(self, job_id: int, number: int, spec: JobSpec, now: float) -> None:
        """The attempt runs (or was found running after an engine restart)."""
        if spec.guard is not None and (job_id, number) not in self.watches:
            self.watches[(job_id, number)] = _Watch(spec.guard, now, LossWatch(spec.guard))

    def metric(self, job_id: int, number: int, record: Mapping[str, Any],
               now: float) -> Trip | None:
        """A metrics record of a running attempt: the step advances (a
        stalled flag clears), the loss is judged. A Trip the first time the
        guard trips (saved before it is returned)."""
        w = self.watches.get((job_id, number))
        step = record.get("step")
        if w is None or isinstance(step, bool) or not isinstance(step, int):
            return None
        if w.last_step is None or step > w.last_step:
            w.last_step, w.last_advance = step, now
            stalled = self._job(job_id).get("stalled", {})
            if str(number) in stalled:
                del stalled[str(number)]
                self._note(job_id, number, now, f"no longer stalled: step {step}")
        loss = guard.loss_of(record)
        if loss is None or self.tripped(job_id, number) is not None:
            return None
        trip = w.loss.see(step, loss)
        if trip is not None:
            self.record_trip(job_id, number, trip, now)
        return trip

    def record_trip(self, job_id: int, number: int, trip: Trip, now: float) -> None:
        self._job(job_id).setdefault("trips", {})[str(number)] = asdict(trip)
        action = "restart" if trip.action in ("restart", "retry") else "fail"
        self._note(job_id, number, now, f"{trip.reason}: {action}")

    def tripped(self, job_id: int, number: int) -> Trip | None:
        saved = self.jobs.get(str(job_id), {}).get("trips", {}).get(str(number))
        try:
            return Trip(**saved) if isinstance(saved, dict) else None
        except TypeError:
            return None

    def watch(self, now: float) -> list[Stall]:
        """Attempts newly stalled (each flagged once, with a note)."""
        out = []
        for (job_id, number), w in self.watches.items():
            if w.spec.stall_after is None:
                continue
            stalled = self._job(job_id).setdefault("stalled", {})
            if str(number) in stalled:
                continue
            seconds = guard.stalled_for(now, w.running_since, w.last_advance, w.spec.stall_after)
            if seconds is None:
                continue
            words = guard.stall_words(seconds, w.last_step)
            stalled[str(number)] = {"since": w.last_advance or w.running_since,
                                    "last_step": w.last_step}
            self._note(job_id, number, now, words)
            out.append(Stall(job_id, number, seconds, w.last_step, words))
        return out

    def stall_trip(self, stall: Stall, now: float) -> Trip:
        """on_stall = "retry": the attempt ends as failed and restarts from
        its newest checkpoint at or before its last step (from the start when
        it reported none), the lr unchanged."""
        trip = Trip("retry", f"stall watch: {stall.words}", stall.last_step,
                    from_start=stall.last_step is None, lr_scale=1.0, by="stall watch")
        self.record_trip(stall.job_id, stall.number, trip, now)
        return trip

    def dumped(self, job_id: int, number: int, node: str, files: tuple[str, ...],
               errors: tuple[str, ...], now: float) -> None:
        """A node's answer to the stack dump request."""
        ranks = ", ".join(f"rank {_rank(f)} on {node}" for f in files) or f"none on {node}"
        text = f"stack dumps: {ranks}" + (f" -> {', '.join(files)}" if files else "")
        if errors:
            text += f" (errors: {'; '.join(errors)[:300]})"
        self._note(job_id, number, now, text)

    def forget(self, job_id: int, number: int) -> None:
        """The attempt has ended: its stalled flag goes with it."""
        self.watches.pop((job_id, number), None)
        stalled = self.jobs.get(str(job_id), {}).get("stalled", {})
        if stalled.pop(str(number), None) is not None:
            self.changed.add(job_id)
            self._save()

    # ------------------------------------------------------------ restarts
    def restarts(self, job_id: int) -> tuple[Restart, ...]:
        saved = self.jobs.get(str(job_id), {}).get("restarts", [])
        out = []
        for r in saved if isinstance(saved, list) else ():
            try:
                out.append(Restart(**{k: v for k, v in r.items()
                                      if k not in ("attempt", "reason")}))
            except TypeError:
                continue
        return tuple(out)

    def restarts_before(self, job_id: int, number: int) -> int:
        """Guard restarts that made attempts up to `number`."""
        saved = self.jobs.get(str(job_id), {}).get("restarts", [])
        return sum(1 for r in saved if isinstance(r, dict) and r.get("attempt", 0) <= number)

    def plan(self, job_id: int, number: int, spec: JobSpec) -> Restart | None:
        """The guard restart due after attempt `number` ended tripped, recorded
        for attempt number + 1 (before the store makes it), or None."""
        trip = self.tripped(job_id, number)
        if trip is None or spec.guard is None:
            return None
        restart = guard.plan_restart(spec.guard, trip, self.restarts(job_id))
        if restart is None:
            return None
        saved = self._job(job_id).setdefault("restarts", [])
        saved[:] = [r for r in saved if r.get("attempt") != number + 1]
        saved.append({"attempt": number + 1, "reason": trip.reason, **asdict(restart)})
        self.changed.add(job_id)
        self._save()
        return restart

    def launch_env(self, job_id: int, number: int) -> dict[str, str]:
        """LLMCONSOLE_LR_SCALE / LLMCONSOLE_RESUME_AT_OR_BEFORE for an attempt
        a guard restart made; {} for others."""
        for r in self.jobs.get(str(job_id), {}).get("restarts", []):
            if r.get("attempt") == number:
                return Restart(**{k: v for k, v in r.items()
                                  if k not in ("attempt", "reason")}).env()
        return {}

    # ---------------------------------------------------------------- view
    def view(self, job_id: int, number: int) -> dict[str, Any] | None:
        """What the job view shows: the current attempt's stalled flag, the
        guard restarts (in words) and the notes; None for a job the guard
        never acted on."""
        doc = self.jobs.get(str(job_id))
        if not doc:
            return None
        stalled = doc.get("stalled", {}).get(str(number))
        restarts = [r for r in doc.get("restarts", []) if isinstance(r, dict)]
        current = next((r for r in restarts if r.get("attempt") == number), None)
        return {
            "stalled": stalled,
            "restart": _restart_words(current) if current else None,
            "restarts": [{"attempt": r.get("attempt"), "words": _restart_words(r),
                          "reason": r.get("reason")} for r in restarts],
            "notes": list(doc.get("notes", [])),
        }


def _restart_words(saved: Mapping[str, Any]) -> str:
    try:
        return Restart(**{k: v for k, v in saved.items()
                          if k not in ("attempt", "reason")}).words()
    except TypeError:
        return "restart by loss guard"


def _rank(path: str) -> str:
    """The rank in a dump file's name (rank-<R>-<node>-pid<P>.txt)."""
    name = Path(path).name
    return name.split("-")[1] if name.startswith("rank-") and name.count("-") >= 2 else "x"
