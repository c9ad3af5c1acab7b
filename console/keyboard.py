"""When the dashboard's job keys apply, and the groups of the `?` help:
pure functions of a job's view and of bindings (the app asks them in its
`check_action` and its help action).

A key that cannot apply is disabled (shown dim in the footer, pressing it
does nothing) rather than opening a dialog that fails: no job selected for
any job key; cancel on an ended job; retry on one that has not ended;
priority on one that is no longer waiting (held or queued).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from textual.binding import Binding, BindingType

ENDED = frozenset({"succeeded", "failed", "cancelled", "lost"})
WAITING = frozenset({"held", "queued"})
JOB_ACTIONS = frozenset({"cancel_job", "retry_job", "change_priority", "show_job",
                         "show_logs"})


def disabled(action: str, job: Mapping[str, Any] | None) -> bool:
    """True when `action` cannot apply to the selected `job` (None: none)."""
    if action not in JOB_ACTIONS:
        return False
    if job is None:
        return True
    state = str(job.get("state"))
    if action == "cancel_job":
        return state in ENDED
    if action == "retry_job":
        return state not in ENDED
    if action == "change_priority":
        return state not in WAITING
    return False


def first_key(binding: Binding, keymap: Mapping[str, str]) -> str:
    """The first of a binding's keys as bound now (remapped by id)."""
    keys = keymap.get(binding.id or "", binding.key) if binding.id else binding.key
    return keys.split(",")[0].strip()


def defaults(bindings: Iterable[BindingType]) -> dict[str, str]:
    """Binding id -> its default keys, for `keymap.load`."""
    return {b.id: b.key for b in bindings if isinstance(b, Binding) and b.id}
