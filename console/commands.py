"""The screen's `:` command line, as pure functions: what a line means and
how Tab completes it. No screen library and no engine here; the app runs
what `parse` returns.

Commands (k9s habits):

    :jobs                  the jobs panel
    :nodes                 the GPU (nodes) panel
    :job ID                the job's detail
    :logs ID               the job's detail on its logs
    :submit PROFILE [key=value ...]   checked as the submit form checks
    :cancel ID             asks first
    :q, :quit              leave the screen (jobs keep running)
    :help                  the keys

`parse` raises `CommandError`, whose message is the one line shown under
the input. `complete` returns the line Tab makes of it and the candidates
it chose among.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

#: Command name -> (argument kind, usage). Kinds: "" none, "job" an id,
#: "profile" a profile and overrides.
COMMANDS: dict[str, tuple[str, str]] = {
    "jobs": ("", ":jobs"),
    "nodes": ("", ":nodes"),
    "job": ("job", ":job ID"),
    "logs": ("job", ":logs ID"),
    "submit": ("profile", ":submit PROFILE [key=value ...]"),
    "cancel": ("job", ":cancel ID"),
    "help": ("", ":help"),
    "quit": ("", ":q"),
}
ALIASES = {"q": "quit", "q!": "quit", "exit": "quit", "j": "jobs", "n": "nodes",
           "l": "logs", "log": "logs", "?": "help"}


class CommandError(ValueError):
    """A line that is not a command: the one line to show, with its usage."""


@dataclass(frozen=True)
class Command:
    name: str  # a key of COMMANDS
    job_id: int | None = None
    profile: str | None = None
    overrides: tuple[str, ...] = field(default=())


def usage() -> str:
    return "commands: " + ", ".join(u for _k, u in COMMANDS.values())


def parse(line: str) -> Command:
    """The command a line (with or without its leading ':') means."""
    text = line.strip().removeprefix(":").strip()
    if not text:
        raise CommandError(usage())
    try:
        words = shlex.split(text)
    except ValueError as exc:  # an unclosed quote
        raise CommandError(f"{text!r}: {exc}") from None
    head, args = words[0].lower(), words[1:]
    name = ALIASES.get(head, head)
    if name not in COMMANDS:
        raise CommandError(f"unknown command {head!r}; {usage()}")
    kind, use = COMMANDS[name]
    if kind == "":
        if args:
            raise CommandError(f":{head} takes no argument (usage: {use})")
        return Command(name)
    if kind == "job":
        if len(args) != 1:
            raise CommandError(f":{head} takes one job id (usage: {use})")
        if not args[0].isdigit() or int(args[0]) < 1:
            raise CommandError(f"{args[0]!r} is not a job id, a whole number (usage: {use})")
        return Command(name, job_id=int(args[0]))
    if not args:
        raise CommandError(f":{head} needs a profile (usage: {use})")
    bad = [a for a in args[1:] if "=" not in a or a.startswith("=")]
    if bad:
        raise CommandError(f"{bad[0]!r} is not an override key=value (usage: {use})")
    return Command(name, profile=args[0], overrides=tuple(args[1:]))


def _common_prefix(words: Sequence[str]) -> str:
    if not words:
        return ""
    first, last = min(words), max(words)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n]


def complete(line: str, profiles: Iterable[str], job_ids: Iterable[int]
             ) -> tuple[str, list[str]]:
    """(the line after Tab, the candidates for the word under completion).
    The first word completes to a command name, the second to a profile
    name (:submit) or a job id (:job, :logs, :cancel); a unique candidate
    is taken whole with a space after it, several to their common prefix."""
    colon = ":" if line.lstrip().startswith(":") else ""
    text = line.lstrip().removeprefix(":")
    words = text.split(" ")
    if len(words) == 1:
        pool = sorted(COMMANDS)
        done: list[str] = []
    elif len(words) == 2:
        kind = COMMANDS.get(ALIASES.get(words[0].lower(), words[0].lower()), ("", ""))[0]
        pool = (sorted(profiles) if kind == "profile" else
                [str(i) for i in sorted(job_ids, reverse=True)] if kind == "job" else [])
        done = words[:1]
    else:
        return line, []
    word = words[-1]
    matches = [p for p in pool if p.startswith(word)]
    if not matches:
        return line, []
    if len(matches) == 1:
        return colon + " ".join([*done, matches[0]]) + " ", matches
    return colon + " ".join([*done, _common_prefix(matches) or word]), matches
