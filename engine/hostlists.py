"""The host lists people already have, read as values: horovod ``-H`` lists,
horovod/Open MPI/DeepSpeed hostfiles and Slurm node lists; and Slurm's short
form of a set of names, for display. Pure: text in, values out, no I/O (the
command that reads files and writes profiles is `engine.cli_cluster`).

Contract
========

Every parser returns `HostEntry` values in the order of the text, each with
the line and column where its host starts (1-based), or raises
`HostListError` (a `ValueError`) whose `str` is one line::

    line <L>, column <C>: <problem>; expected <what>

naming the first offending character. Hosts are taken as written: checking
that one is a valid hostname for a profile is the caller's business
(`engine.spec_rules.check_host`), and so are repeated hosts (`check_unique`).

Formats
-------

``horovod`` (`parse_horovod_hosts`): ``h1:4,h2:4`` as given to ``horovodrun
-H``; items separated by commas or line breaks, spaces around them ignored,
an optional leading ``-H`` or ``--hosts``/``--hosts=``. ``:N`` (the slot
count, >= 1) may be left out (slots unknown); an IPv6 address with a slot
count is written in brackets, ``[fe80::1]:4``.

``hostfile`` (`parse_hostfile`): one host a line, ``host [slots=N]
[max_slots=M]`` (``max-slots`` too), as horovod, Open MPI and DeepSpeed
(``worker-0 slots=4``) write them; ``#`` starts a comment, blank lines are
skipped, each key at most once a line, ``max_slots >= slots``.

``slurm`` (`expand_slurm`): node lists such as ``gpu[01-04,07]``,
``a[1-2]b[3-4]`` (every combination, the leftmost bracket varying slowest)
and several of them separated by commas or spaces: ``gpu[01-02],cpu7``. A
range's numbers keep the width of its low end (``[08-10]`` gives 08, 09,
10; ``[8-10]`` gives 8, 9, 10): leading zeros are kept. Names are expanded
as written, repeats included; more than `MAX_HOSTS` in all is an error.

`compress_slurm` is the inverse for display: ``expand_slurm(compress_slurm(
names))`` gives the same set of names back.

`detect_format` tells the formats apart: a ``key=value`` word or a ``#``
means a hostfile, a ``[`` a Slurm list, a ``:N`` or a comma a horovod list;
anything else (one host a line) is read as a hostfile.

This is written from the formats' documentation; python-hostlist (GPL) is
neither used nor copied.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "FORMATS",
    "MAX_HOSTS",
    "HostEntry",
    "HostListError",
    "check_unique",
    "compress_slurm",
    "detect_format",
    "expand_slurm",
    "parse_hostfile",
    "parse_horovod_hosts",
    "parse_hosts",
]

FORMATS = ("horovod", "hostfile", "slurm")

# The most hosts one list may name: far beyond any SSH-managed cluster, and a
# bound on what a typo such as gpu[0-99999999] makes us build in memory.
MAX_HOSTS = 65536
# The largest slot count taken: the cluster profile's own limit on slots.
MAX_SLOTS = 1_000_000

# What a host (or a literal part of a Slurm name) is made of here: the
# characters of hostnames, ssh aliases and IP addresses. Anything else is an
# error at its column.
_HOST_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")
_SLOTS_EXPECTED = f"a slot count, a whole number from 1 to {MAX_SLOTS}"
_HOST_EXPECTED = "a hostname, ssh alias or IP address"
_HOSTFILE_KEYS = {"slots": "slots", "max_slots": "max_slots", "max-slots": "max_slots"}


class HostListError(ValueError):
    """A host list that cannot be read: where (1-based line and column),
    what is wrong and what was expected."""

    def __init__(self, problem: str, expected: str, line: int, column: int) -> None:
        self.problem = problem
        self.expected = expected
        self.line = line
        self.column = column
        super().__init__(f"line {line}, column {column}: {problem}; expected {expected}")


@dataclass(frozen=True)
class HostEntry:
    """One host of a list: its slot count (None: not given) and, from an
    Open MPI hostfile, its max_slots; where it starts in the text."""

    host: str
    slots: int | None = None
    max_slots: int | None = None
    line: int = 1
    column: int = 1


def _shown(ch: str) -> str:
    return repr(ch) if ch.isprintable() and ch not in "'\"" else ascii(ch)


def _bad_char(ch: str, expected: str, line: int, column: int) -> HostListError:
    return HostListError(f"unexpected character {_shown(ch)}", expected, line, column)


def _slots(text: str, line: int, column: int) -> int:
    if not text:
        raise HostListError("the slot count is missing", _SLOTS_EXPECTED, line, column)
    for i, ch in enumerate(text):
        if not ("0" <= ch <= "9"):
            raise HostListError(f"the slot count {text!r} is not a whole number",
                                _SLOTS_EXPECTED, line, column + i)
    if len(text) > len(str(MAX_SLOTS)) or not 1 <= int(text) <= MAX_SLOTS:
        raise HostListError(f"the slot count {text} is out of range", _SLOTS_EXPECTED,
                            line, column)
    return int(text)


def _check_host_chars(host: str, line: int, column: int, expected: str = _HOST_EXPECTED
                      ) -> None:
    if not host:
        raise HostListError("the host is missing", expected, line, column)
    for i, ch in enumerate(host):
        if ch not in _HOST_CHARS:
            raise _bad_char(ch, expected, line, column + i)


def _lines(text: str) -> list[str]:
    return text.removeprefix("\ufeff").split("\n")


# ---------------------------------------------------------------------------
# horovod -H


_HOROVOD_PREFIX = re.compile(r"\s*(?:-H|--hosts)(?:=|\s+)")
_HOROVOD_EXPECTED = "host or host:slots items separated by commas, e.g. h1:4,h2:4"


def _horovod_item(item: str, line: int, column: int) -> HostEntry:
    if item.startswith("["):
        close = item.find("]")
        if close < 0:
            raise HostListError("'[' is never closed", "an IPv6 address in brackets, "
                                "[fe80::1]:4", line, column)
        host, rest = item[1:close], item[close + 1:]
        _check_host_chars(host, line, column + 1)
        if rest and not rest.startswith(":"):
            raise _bad_char(rest[0], "':' and a slot count after ']'", line, column + close + 1)
        slots = _slots(rest[1:], line, column + close + 2) if rest else None
        return HostEntry(host, slots, line=line, column=column)
    host, colon, count = item.partition(":")
    if colon and ":" in count:
        raise HostListError("more than one ':'", "host:slots (an IPv6 address with slots in "
                            "brackets, [fe80::1]:4)", line,
                            column + len(host) + 1 + count.index(":"))
    _check_host_chars(host, line, column, _HOROVOD_EXPECTED)
    slots = _slots(count, line, column + len(host) + 1) if colon else None
    return HostEntry(host, slots, line=line, column=column)


def parse_horovod_hosts(text: str) -> list[HostEntry]:
    """The hosts of a horovodrun ``-H`` list (see the module docstring)."""
    entries: list[HostEntry] = []
    lines = _lines(text)
    for number, raw in enumerate(lines, start=1):
        offset = 0
        if number == 1 or not entries:
            prefix = _HOROVOD_PREFIX.match(raw)
            if prefix:
                offset = prefix.end()
        body = raw[offset:].rstrip("\r")
        if not body.strip():
            continue
        start = offset
        for piece in body.split(","):
            stripped = piece.strip()
            lead = len(piece) - len(piece.lstrip())
            column = start + lead + 1
            if not stripped:
                raise HostListError("an empty item", _HOROVOD_EXPECTED, number, column)
            for i, ch in enumerate(stripped):
                if ch.isspace():
                    raise HostListError("a space inside an item", _HOROVOD_EXPECTED,
                                        number, column + i)
            entries.append(_horovod_item(stripped, number, column))
            start += len(piece) + 1
    if not entries:
        raise HostListError("no hosts", _HOROVOD_EXPECTED, 1, 1)
    return entries


# ---------------------------------------------------------------------------
# Hostfiles


_HOSTFILE_EXPECTED = "host [slots=N] [max_slots=M] on each line, e.g. gpu01 slots=4"
_WORD = re.compile(r"\S+")


def parse_hostfile(text: str) -> list[HostEntry]:
    """The hosts of a horovod, Open MPI or DeepSpeed hostfile (see the
    module docstring)."""
    entries: list[HostEntry] = []
    for number, raw in enumerate(_lines(text), start=1):
        content = raw.split("#", 1)[0].rstrip("\r")
        words = [(m.group(), m.start() + 1) for m in _WORD.finditer(content)]
        if not words:
            continue
        (host, column), options = words[0], words[1:]
        if "=" in host:
            raise HostListError(f"{host!r} comes before the host", _HOSTFILE_EXPECTED,
                                number, column)
        _check_host_chars(host, number, column, _HOSTFILE_EXPECTED)
        values: dict[str, int] = {}
        for word, at in options:
            key, eq, value = word.partition("=")
            field = _HOSTFILE_KEYS.get(key)
            if not eq or field is None:
                raise HostListError(f"unknown setting {word!r}", "slots=N or max_slots=M "
                                    "after the host", number, at)
            if field in values:
                raise HostListError(f"{key} is given twice", f"one {key}= on a line",
                                    number, at)
            values[field] = _slots(value, number, at + len(key) + 1)
        slots, max_slots = values.get("slots"), values.get("max_slots")
        if slots is not None and max_slots is not None and max_slots < slots:
            at = next(a for w, a in options if w.startswith(("max_slots", "max-slots")))
            raise HostListError(f"max_slots={max_slots} is less than slots={slots}",
                                "max_slots at least slots", number, at)
        entries.append(HostEntry(host, slots, max_slots, line=number, column=column))
    if not entries:
        raise HostListError("no hosts (only blank lines and comments)", _HOSTFILE_EXPECTED,
                            1, 1)
    return entries


# ---------------------------------------------------------------------------
# Slurm node lists


_SLURM_EXPECTED = "a node list such as gpu[01-04,07]"
_RANGE_EXPECTED = "numbers or ranges such as 01-04 inside [...], separated by commas"


@dataclass(frozen=True)
class _Range:
    low: int
    high: int
    width: int  # of the low end as written: every number is padded to it

    def names(self) -> list[str]:
        return [str(n).zfill(self.width) for n in range(self.low, self.high + 1)]


def _parse_brackets(expr: str, start: int, line: int, col0: int) -> tuple[list[_Range], int]:
    """The ranges inside the brackets opening at `expr[start]`, and the
    index after the closing bracket."""
    ranges: list[_Range] = []
    i = start + 1
    while True:
        j = i
        while j < len(expr) and expr[j].isdigit() and expr[j].isascii():
            j += 1
        if j == i:
            if i >= len(expr):
                raise HostListError("'[' is never closed", "']'", line, col0 + start)
            raise (_bad_char(expr[i], _RANGE_EXPECTED, line, col0 + i) if expr[i] not in ",]-"
                   else HostListError(f"{expr[i]!r} where a number belongs", _RANGE_EXPECTED,
                                      line, col0 + i))
        low_text = expr[i:j]
        high_text = low_text
        if j < len(expr) and expr[j] == "-":
            k = j + 1
            while k < len(expr) and expr[k].isdigit() and expr[k].isascii():
                k += 1
            if k == j + 1:
                if k >= len(expr):
                    raise HostListError("'[' is never closed", "']'", line, col0 + start)
                raise (_bad_char(expr[k], _RANGE_EXPECTED, line, col0 + k)
                       if expr[k] not in ",]-" else
                       HostListError("a range without its high end", _RANGE_EXPECTED,
                                     line, col0 + k))
            high_text = expr[j + 1:k]
            j = k
        # what ends the range first: a stray character after it comes before
        # what is wrong with its numbers
        if j >= len(expr):
            raise HostListError("'[' is never closed", "']'", line, col0 + start)
        if expr[j] not in ",]":
            raise _bad_char(expr[j], "',' or ']' after a number", line, col0 + j)
        if len(low_text) > 9 or len(high_text) > 9:
            raise HostListError("a number of more than 9 digits", _RANGE_EXPECTED,
                                line, col0 + i)
        low, high = int(low_text), int(high_text)
        if high < low:
            raise HostListError(f"the range {low_text}-{high_text} goes down",
                                "a range from low to high, such as 01-04", line, col0 + i)
        ranges.append(_Range(low, high, len(low_text)))
        if expr[j] == "]":
            return ranges, j + 1
        i = j + 1


def _too_many(line: int, column: int) -> HostListError:
    return HostListError(f"the list names more than {MAX_HOSTS} hosts",
                         f"at most {MAX_HOSTS} hosts in all (a typo in a range?)", line, column)


def _expand_expr(expr: str, line: int, col0: int, room: int) -> list[str]:
    """The names of one node-list expression (no top-level commas), which
    starts at column `col0`; at most `room` of them."""
    parts: list[list[str]] = []
    i = 0
    literal_start = 0
    while i < len(expr):
        ch = expr[i]
        if ch == "[":
            if i > literal_start:
                parts.append([expr[literal_start:i]])
            ranges, i = _parse_brackets(expr, i, line, col0)
            if sum(r.high - r.low + 1 for r in ranges) > room:
                raise _too_many(line, col0)
            parts.append([name for r in ranges for name in r.names()])
            literal_start = i
            continue
        if ch == "]":
            raise HostListError("']' without '['", _SLURM_EXPECTED, line, col0 + i)
        if ch not in _HOST_CHARS:
            raise _bad_char(ch, _SLURM_EXPECTED, line, col0 + i)
        i += 1
    if literal_start < len(expr):
        parts.append([expr[literal_start:]])
    count = 1
    for part in parts:
        count *= len(part)
    if count > room:
        raise _too_many(line, col0)
    names = [""]
    for part in parts:
        names = [prefix + piece for prefix in names for piece in part]
    return names


def _slurm_entries(text: str) -> list[HostEntry]:
    entries: list[HostEntry] = []
    for number, raw in enumerate(_lines(text), start=1):
        line = raw.rstrip("\r")
        comma: int | None = None  # the column of a comma still waiting for its item
        i = 0
        while True:
            while i < len(line) and line[i].isspace():
                i += 1
            if i >= len(line):
                if comma is not None:
                    raise HostListError("a comma with nothing after it", _SLURM_EXPECTED,
                                        number, comma)
                break
            if line[i] == ",":
                raise HostListError("an empty item", _SLURM_EXPECTED, number, i + 1)
            j = i
            depth = 0
            while j < len(line) and (depth or not (line[j] == "," or line[j].isspace())):
                if line[j] == "[":
                    depth += 1
                elif line[j] == "]":
                    depth = max(0, depth - 1)
                j += 1  # a space inside brackets is reported, in its place, below
            names = _expand_expr(line[i:j], number, i + 1, MAX_HOSTS - len(entries))
            entries.extend(HostEntry(name, line=number, column=i + 1) for name in names)
            i = j
            while i < len(line) and line[i].isspace():
                i += 1
            comma = None
            if i < len(line) and line[i] == ",":
                comma = i + 1
                i += 1
    if not entries:
        raise HostListError("no hosts", _SLURM_EXPECTED, 1, 1)
    return entries


def expand_slurm(text: str) -> list[str]:
    """The names a Slurm node list stands for, in order, repeats kept (see
    the module docstring)."""
    return [entry.host for entry in _slurm_entries(text)]


_LAST_NUMBER = re.compile(r"([0-9]+)([^0-9]*)$")


def compress_slurm(names: Iterable[str], separator: str = ",") -> str:
    """A short Slurm node list for `names` (repeats dropped): names that
    differ only in their last number share brackets, ``gpu[01-04,07]``,
    leading zeros kept. Groups come in the order their first name comes;
    `separator` goes between them (", " reads better in a sentence).
    Raises ValueError for a name that a node list cannot hold (empty, or
    with brackets, commas, spaces or other characters no host has)."""
    groups: dict[tuple[str, str], list[str]] = {}
    plain: dict[str, None] = {}
    order: list[tuple[str, str] | str] = []
    for name in dict.fromkeys(names):
        if not name or any(ch not in _HOST_CHARS for ch in name):
            raise ValueError(f"{name!r} cannot be part of a Slurm node list")
        match = _LAST_NUMBER.search(name)
        if match is None:
            plain[name] = None
            order.append(name)
            continue
        key = (name[:match.start()], match.group(2))
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(match.group(1))
    out: list[str] = []
    for item in order:
        if isinstance(item, str):
            out.append(item)
            continue
        prefix, suffix = item
        numbers = groups[item]
        if len(numbers) == 1:
            out.append(prefix + numbers[0] + suffix)
            continue
        out.append(f"{prefix}[{','.join(_ranges(numbers))}]{suffix}")
    return separator.join(out)


def _ranges(numbers: list[str]) -> list[str]:
    """Range texts covering exactly `numbers` (digit strings, no repeats).

    A number written with leading zeros can only come from a range whose low
    end has its width; one without them comes from any width up to its own
    length. So each padded width gets its own ranges, which unpadded numbers
    of that length join; the other unpadded numbers go in unpadded ranges."""
    padded_widths = {len(d) for d in numbers if len(d) > 1 and d[0] == "0"}
    by_width: dict[int, list[int]] = {}
    for digits in numbers:
        padded = len(digits) > 1 and digits[0] == "0"
        width = len(digits) if padded or len(digits) in padded_widths else 1
        by_width.setdefault(width, []).append(int(digits))
    texts: list[tuple[int, str]] = []
    for width, values in by_width.items():
        values.sort()
        low = prev = values[0]
        for value in [*values[1:], None]:
            if value is not None and value == prev + 1:
                prev = value
                continue
            text = str(low).zfill(width)
            if prev != low:
                text += "-" + str(prev).zfill(width)
            texts.append((low, text))
            if value is not None:
                low = prev = value
    texts.sort()
    return [text for _low, text in texts]


# ---------------------------------------------------------------------------
# Any format


def detect_format(text: str) -> str:
    """Which of `FORMATS` `text` is written in (see the module docstring)."""
    lines = [line for line in _lines(text) if line.strip()]
    if any("#" in line for line in lines) or any(
            "=" in word for line in lines for word in line.split()[1:]):
        return "hostfile"
    if any("[" in line or "]" in line for line in lines):
        return "slurm"
    if any("," in line or re.search(r":[0-9]+\s*$|:[0-9]+\s*,", line) for line in lines) or (
            lines and _HOROVOD_PREFIX.match(lines[0])):
        return "horovod"
    return "hostfile"


def check_unique(entries: Iterable[HostEntry]) -> None:
    """Raise `HostListError` at the second mention of a host named twice."""
    seen: dict[str, HostEntry] = {}
    for entry in entries:
        first = seen.get(entry.host)
        if first is not None:
            raise HostListError(f"host {entry.host} is listed twice (also line {first.line}, "
                                f"column {first.column})", "each host once",
                                entry.line, entry.column)
        seen[entry.host] = entry


def parse_hosts(text: str, fmt: str = "auto") -> tuple[str, list[HostEntry]]:
    """The format (`fmt`, or the detected one for "auto") and the hosts of
    `text`, each host once (`check_unique`)."""
    if fmt == "auto":
        fmt = detect_format(text)
    if fmt == "horovod":
        entries = parse_horovod_hosts(text)
    elif fmt == "hostfile":
        entries = parse_hostfile(text)
    elif fmt == "slurm":
        entries = _slurm_entries(text)
    else:
        raise ValueError(f"unknown host list format {fmt!r}; expected auto or one of "
                         + ", ".join(FORMATS))
    check_unique(entries)
    return fmt, entries
