"""Tests of the host-list parsers: hypothesis properties of Slurm node lists
(expanding a compressed set gives the set back, the count is the product of
the range sizes, leading zeros are kept, a bad character is named by its
column) and examples of every format: horovod -H lists, horovod/Open
MPI/DeepSpeed hostfiles, Slurm node lists."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.hostlists import (
    MAX_HOSTS,
    HostEntry,
    HostListError,
    check_unique,
    compress_slurm,
    detect_format,
    expand_slurm,
    parse_horovod_hosts,
    parse_hostfile,
    parse_hosts,
)

# Characters no host list holds anywhere: inserted into a valid list, each
# must be reported at its own column.
BAD_CHARS = "!@$;&|'\"(){}<>=*?^~`#/\\%é"


def where(err: pytest.ExceptionInfo[HostListError]) -> tuple[int, int]:
    return err.value.line, err.value.column


# --- strategies ------------------------------------------------------------

prefixes = st.sampled_from(["gpu", "node-", "a1b", "rack2-n", "x", "", "h.lab-"])
suffixes = st.sampled_from(["", "-ib", ".lab", "b"])


@st.composite
def host_names(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from(["head", "login", "gpu-ib"]))
    width = draw(st.integers(1, 4))
    number = draw(st.integers(0, 10**width + 50))  # some overflow their width
    return draw(prefixes) + str(number).zfill(width) + draw(suffixes)


@st.composite
def node_list(draw: st.DrawFn) -> tuple[str, int]:
    """A node-list expression and how many names it stands for."""
    text = draw(st.sampled_from(["gpu", "n", "rack-"]))
    count = 1
    for _ in range(draw(st.integers(1, 3))):
        ranges = []
        size = 0
        for _ in range(draw(st.integers(1, 3))):
            width = draw(st.integers(1, 3))
            low = draw(st.integers(0, 10**width - 1))
            span = draw(st.integers(0, 4))
            high = low + span
            size += span + 1
            ranges.append(str(low).zfill(width) + (f"-{str(high).zfill(width)}" if span else ""))
        text += "[" + ",".join(ranges) + "]" + draw(st.sampled_from(["", "x", "-", ".a"]))
        count *= size
    return text, count


# --- properties: Slurm node lists -----------------------------------------


@settings(max_examples=300, deadline=None)
@given(names=st.lists(host_names(), min_size=1, max_size=40))
def test_expanding_a_compressed_set_gives_the_set_back(names: list[str]) -> None:
    text = compress_slurm(names)
    expanded = expand_slurm(text)
    assert sorted(expanded) == sorted(set(names)), text


@settings(max_examples=300, deadline=None)
@given(expr=node_list())
def test_count_is_the_product_of_the_range_sizes(expr: tuple[str, int]) -> None:
    text, count = expr
    assert len(expand_slurm(text)) == count


@settings(max_examples=200, deadline=None)
@given(width=st.integers(1, 5), low=st.integers(0, 99999), span=st.integers(0, 40))
def test_leading_zeros_are_kept(width: int, low: int, span: int) -> None:
    low %= 10**width
    high = low + span
    text = f"gpu[{str(low).zfill(width)}-{str(high).zfill(width)}]"
    assert expand_slurm(text) == [f"gpu{str(n).zfill(width)}" for n in range(low, high + 1)]


@settings(max_examples=300, deadline=None)
@given(exprs=st.lists(node_list(), min_size=1, max_size=3), data=st.data())
def test_a_bad_character_is_named_by_its_column(
        exprs: list[tuple[str, int]], data: st.DataObject) -> None:
    text = ",".join(e for e, _ in exprs)
    at = data.draw(st.integers(0, len(text)))
    bad = data.draw(st.sampled_from(BAD_CHARS))
    with pytest.raises(HostListError) as err:
        expand_slurm(text[:at] + bad + text[at:])
    assert where(err) == (1, at + 1), (text, at, str(err.value))
    assert str(err.value).startswith(f"line 1, column {at + 1}: ")
    assert "; expected " in str(err.value) and "\n" not in str(err.value)


@settings(max_examples=200, deadline=None)
@given(hosts=st.lists(st.tuples(st.sampled_from(["h1", "gpu-02", "10.0.0.5", "a.b"]),
                                st.one_of(st.none(), st.integers(1, 64))),
                      min_size=1, max_size=5),
       data=st.data())
def test_a_bad_character_in_a_horovod_list_is_named_by_its_column(
        hosts: list[tuple[str, int | None]], data: st.DataObject) -> None:
    text = ",".join(h if s is None else f"{h}:{s}" for h, s in hosts)
    at = data.draw(st.integers(0, len(text)))
    bad = data.draw(st.sampled_from(BAD_CHARS))
    with pytest.raises(HostListError) as err:
        parse_horovod_hosts(text[:at] + bad + text[at:])
    assert where(err) == (1, at + 1), (text, at, str(err.value))


# --- examples: Slurm node lists --------------------------------------------


def test_slurm_ranges_and_single_numbers_keep_their_width() -> None:
    assert expand_slurm("gpu[01-04,07]") == ["gpu01", "gpu02", "gpu03", "gpu04", "gpu07"]
    assert expand_slurm("gpu[08-10]") == ["gpu08", "gpu09", "gpu10"]
    assert expand_slurm("gpu[8-10]") == ["gpu8", "gpu9", "gpu10"]
    assert expand_slurm("n[001-002]-ib") == ["n001-ib", "n002-ib"]


def test_slurm_brackets_combine_leftmost_slowest() -> None:
    assert expand_slurm("a[1-2]b[3-4]") == ["a1b3", "a1b4", "a2b3", "a2b4"]


def test_several_slurm_lists_separated_by_commas_spaces_and_lines() -> None:
    assert expand_slurm("gpu[01-02],cpu7 login\nx[1-2], y") == [
        "gpu01", "gpu02", "cpu7", "login", "x1", "x2", "y"]


@pytest.mark.parametrize(("text", "column", "fragment"), [
    ("gpu[01-04", 4, "'[' is never closed"),
    ("gpu[4-1]", 5, "the range 4-1 goes down"),
    ("gpu[]", 5, "where a number belongs"),
    ("gpu[1-]", 7, "without its high end"),
    ("gpu[1 2]", 6, "unexpected character ' '"),
    ("gpu]", 4, "']' without '['"),
    ("a,,b", 3, "an empty item"),
    ("gpu[01-02],", 11, "a comma with nothing after it"),
    ("gpu[1-2]x[[3]]", 11, "unexpected character '['"),
])
def test_slurm_errors_name_the_column(text: str, column: int, fragment: str) -> None:
    with pytest.raises(HostListError) as err:
        expand_slurm(text)
    assert where(err) == (1, column) and fragment in str(err.value)
    assert isinstance(err.value, ValueError)


def test_slurm_lists_that_name_too_many_hosts_are_refused() -> None:
    with pytest.raises(HostListError, match=f"more than {MAX_HOSTS} hosts"):
        expand_slurm("gpu[0-99999999]")
    with pytest.raises(HostListError, match=f"more than {MAX_HOSTS} hosts"):
        expand_slurm("a[0-999]b[0-999]")
    with pytest.raises(HostListError) as err:
        expand_slurm("a[1-2]\n\nb[0-70000]")
    assert where(err) == (3, 1)


def test_compress_groups_by_the_last_number_in_first_seen_order() -> None:
    assert compress_slurm([f"gpu{n:02d}" for n in range(1, 13)]) == "gpu[01-12]"
    assert compress_slurm([f"node{n}" for n in range(1, 17)]) == "node[1-16]"
    assert compress_slurm(["head", "gpu1"], separator=", ") == "head, gpu1"
    assert compress_slurm(["gpu07", "gpu01", "gpu02", "gpu01"]) == "gpu[01-02,07]"
    assert compress_slurm(["gpu9", "gpu09", "gpu10"]) == "gpu[09-10,9]"
    with pytest.raises(ValueError, match="cannot be part of a Slurm node list"):
        compress_slurm(["a[1]"])


# --- examples: horovod -H lists ---------------------------------------------


def test_horovod_list_with_slots_prefix_spaces_and_ipv6() -> None:
    assert parse_horovod_hosts("-H h1:4, h2:2,[fe80::1]:8\n") == [
        HostEntry("h1", 4, line=1, column=4), HostEntry("h2", 2, line=1, column=10),
        HostEntry("fe80::1", 8, line=1, column=15)]
    assert [e.slots for e in parse_horovod_hosts("--hosts=a,b:3")] == [None, 3]
    assert [e.host for e in parse_horovod_hosts("a:1\nb:1\n")] == ["a", "b"]


@pytest.mark.parametrize(("text", "column", "fragment"), [
    ("h1:4,,h2:4", 6, "an empty item"),
    ("h1:0", 4, "out of range"),
    ("h1:x", 4, "not a whole number"),
    ("h1:", 4, "slot count is missing"),
    ("a:b:c", 4, "more than one ':'"),
    (":4", 1, "the host is missing"),
    ("[fe80::1:4", 1, "'[' is never closed"),
])
def test_horovod_errors_name_the_column(text: str, column: int, fragment: str) -> None:
    with pytest.raises(HostListError) as err:
        parse_horovod_hosts(text)
    assert where(err) == (1, column) and fragment in str(err.value)


# --- examples: hostfiles ------------------------------------------------------


def test_open_mpi_hostfile_with_comments_blank_lines_and_max_slots() -> None:
    text = "# the lab\n\nnode1 slots=2 max_slots=4   # two GPUs\n  node2 max-slots=8\nnode3\n"
    assert parse_hostfile(text) == [
        HostEntry("node1", 2, 4, line=3, column=1),
        HostEntry("node2", None, 8, line=4, column=3),
        HostEntry("node3", None, None, line=5, column=1)]


def test_deepspeed_hostfile() -> None:
    entries = parse_hostfile("worker-0 slots=4\nworker-1 slots=4\n")
    assert [(e.host, e.slots) for e in entries] == [("worker-0", 4), ("worker-1", 4)]


@pytest.mark.parametrize(("text", "line", "column", "fragment"), [
    ("a slots=4\nb slots=four\n", 2, 9, "not a whole number"),
    ("a gpus=4\n", 1, 3, "unknown setting 'gpus=4'"),
    ("a slots=4 max_slots=2\n", 1, 11, "less than slots=4"),
    ("a slots=1 slots=2\n", 1, 11, "given twice"),
    ("slots=4 a\n", 1, 1, "comes before the host"),
    ("# nothing\n\n", 1, 1, "no hosts"),
    ("a\nb;c slots=1\n", 2, 2, "unexpected character ';'"),
])
def test_hostfile_errors_name_line_and_column(text: str, line: int, column: int,
                                              fragment: str) -> None:
    with pytest.raises(HostListError) as err:
        parse_hostfile(text)
    assert where(err) == (line, column) and fragment in str(err.value)


# --- any format ---------------------------------------------------------------


@pytest.mark.parametrize(("text", "fmt"), [
    ("h1:4,h2:4", "horovod"),
    ("-H h1:4", "horovod"),
    ("h1,h2", "horovod"),
    ("h1 slots=4\nh2 slots=4", "hostfile"),
    ("# a comment\nh1\n", "hostfile"),
    ("h1\nh2\n", "hostfile"),
    ("gpu[01-04,07]", "slurm"),
])
def test_detect_format(text: str, fmt: str) -> None:
    assert detect_format(text) == fmt


def test_every_format_reads_the_same_cluster() -> None:
    expected = [("gpu01", 4), ("gpu02", 4)]
    for text, fmt in (("gpu01:4,gpu02:4", "horovod"),
                      ("gpu01 slots=4\ngpu02 slots=4\n", "hostfile")):
        found, entries = parse_hosts(text)
        assert found == fmt and [(e.host, e.slots) for e in entries] == expected
    found, entries = parse_hosts("gpu[01-02]")
    assert found == "slurm" and [(e.host, e.slots) for e in entries] == [
        (h, None) for h, _ in expected]


def test_a_host_listed_twice_is_refused_at_its_second_place() -> None:
    with pytest.raises(HostListError) as err:
        parse_hosts("gpu[01-02],gpu02")
    assert where(err) == (1, 12) and "gpu02 is listed twice (also line 1, column 1)" in str(
        err.value)
    with pytest.raises(HostListError, match="listed twice"):
        check_unique([HostEntry("a"), HostEntry("a", line=2)])
    with pytest.raises(ValueError, match="unknown host list format"):
        parse_hosts("a", "pbs")


def test_count_property_helper_agrees_with_math_prod() -> None:
    # the strategy's own bookkeeping, checked once by hand
    assert len(expand_slurm("n[1-3,7][08-09]")) == math.prod([4, 2])


@settings(max_examples=500, deadline=None)
@given(text=st.text(alphabet=st.sampled_from("ab01-:,[]= \n#\t\r.x9é!"), max_size=40))
def test_any_text_gives_hosts_or_one_located_error(text: str) -> None:
    for parse in (expand_slurm, parse_horovod_hosts, parse_hostfile, parse_hosts):
        try:
            parse(text)
        except HostListError as err:
            assert err.line >= 1 and err.column >= 1
            assert "\n" not in str(err)
