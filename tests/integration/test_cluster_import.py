"""`llmconsole cluster import` through the real CLI, on each format people
have (an Open MPI hostfile, a DeepSpeed hostfile, a horovod -H list in a
file, on stdin and inline, Slurm node lists with leading zeros): the profile
it writes is loaded back with `llmconsole profiles validate` and by the
profile loader. Refusals are one line naming the input, its line and
column, and nothing is written then."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chaos.engine_handle import REPO
from engine.model import ClusterSpec, NodeSpec
from engine.profiles import load_cluster_profile


def llmconsole(cwd: Path, *args: str, stdin: str | bytes | None = None
               ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "LLMCONSOLE_HOME": str(cwd / "home")}
    env.pop("LLMCONSOLE_PROFILES", None)
    data = stdin.encode() if isinstance(stdin, str) else stdin
    proc = subprocess.run([sys.executable, "-m", "engine", *args], cwd=cwd, env=env,
                          input=data, capture_output=True, timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(),
                                       proc.stderr.decode())


def imported(cwd: Path, *args: str, stdin: str | bytes | None = None) -> ClusterSpec:
    """Run `cluster import ARGS` (it must succeed), then validate what it
    wrote with `profiles validate` and load it."""
    proc = llmconsole(cwd, "cluster", "import", *args, "--json", stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    path = Path(json.loads(proc.stdout)["path"])
    check = llmconsole(cwd, "profiles", "validate", str(path))
    assert check.returncode == 0 and check.stdout.startswith("ok "), check.stderr
    text = (cwd / path).read_text()
    assert text.startswith("# Written by `llmconsole cluster import` from ")
    return load_cluster_profile(str(cwd / path))


def refused(cwd: Path, *args: str, stdin: str | bytes | None = None) -> str:
    proc = llmconsole(cwd, "cluster", "import", *args, stdin=stdin)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, (
        proc.returncode, proc.stderr)
    assert lines[0].startswith("llmconsole: error: ")
    return lines[0]


def test_an_open_mpi_hostfile(tmp_path: Path) -> None:
    (tmp_path / "hosts").write_text("# the lab\n\nnode1 slots=2 max_slots=4  # head\n"
                                    "node2.lab.example.org slots=8\n10.0.0.7\n")
    spec = imported(tmp_path, "hosts")
    assert spec.name == "hosts"
    assert spec.nodes == (
        NodeSpec(name="node1", slots=2),  # the first node is the head node: no host
        NodeSpec(name="node2", host="node2.lab.example.org", slots=8),
        NodeSpec(name="10.0.0.7", host="10.0.0.7"))
    assert (tmp_path / "profiles" / "clusters" / "hosts.toml").is_file()


def test_a_deepspeed_hostfile_with_gpus_from_slots(tmp_path: Path) -> None:
    (tmp_path / "hostfile").write_text("worker-0 slots=4\nworker-1 slots=4\n")
    spec = imported(tmp_path, "hostfile", "--name", "ds", "--gpus-from-slots")
    assert spec.name == "ds"
    assert [(n.name, n.host, n.slots, n.gpus) for n in spec.nodes] == [
        ("worker-0", None, 4, 4), ("worker-1", "worker-1", 4, 4)]
    # without the option gpus are left to what each node's agent reports
    spec = imported(tmp_path, "hostfile", "--name", "ds2")
    assert [n.gpus for n in spec.nodes] == [None, None]


def test_a_horovod_list_in_a_file_on_stdin_and_inline(tmp_path: Path) -> None:
    (tmp_path / "hosts.txt").write_text("-H gpu1.lab:4,gpu2.lab:4\n")
    from_file = imported(tmp_path, "hosts.txt")
    from_stdin = imported(tmp_path, "-", "--name", "hosts", "--output", "stdin.toml",
                          stdin="gpu1.lab:4,gpu2.lab:4")
    inline = imported(tmp_path, "gpu1.lab:4,gpu2.lab:4", "--output", "inline.toml")
    assert from_file.nodes == from_stdin.nodes == inline.nodes == (
        NodeSpec(name="gpu1", slots=4), NodeSpec(name="gpu2", host="gpu2.lab", slots=4))
    assert inline.name == "inline"  # the output's stem


def test_slurm_node_lists_keep_leading_zeros_and_head_picks_the_head(tmp_path: Path) -> None:
    (tmp_path / "nodelist").write_text("gpu[01-04,07]\n")
    spec = imported(tmp_path, "nodelist", "--head", "gpu03")
    assert [n.name for n in spec.nodes] == ["gpu01", "gpu02", "gpu03", "gpu04", "gpu07"]
    assert [n.host for n in spec.nodes] == ["gpu01", "gpu02", None, "gpu04", "gpu07"]
    spec = imported(tmp_path, "a[1-2]b[08-09]", "--format", "slurm", "--no-head",
                    "--output", "grid.toml")
    assert [n.host for n in spec.nodes] == ["a1b08", "a1b09", "a2b08", "a2b09"]
    assert not any(n.is_local for n in spec.nodes)


def test_names_come_from_hosts_and_stay_unique(tmp_path: Path) -> None:
    spec = imported(tmp_path, "-", "--no-head", "--output", "n.toml",
                    stdin="gpu1.a.org slots=1\ngpu1.b.org slots=1\ngpu2.a.org slots=1\n"
                          "fe80::1\n")
    assert [(n.name, n.host) for n in spec.nodes] == [
        ("gpu1.a.org", "gpu1.a.org"), ("gpu1.b.org", "gpu1.b.org"),
        ("gpu2", "gpu2.a.org"), ("fe80--1", "fe80::1")]


def test_an_existing_file_is_kept_without_force_and_replaced_with_it(tmp_path: Path) -> None:
    out = tmp_path / "lab.toml"
    out.write_text("# mine\n")
    line = refused(tmp_path, "h1:4,h2:4", "--output", "lab.toml")
    assert "lab.toml exists; pass --force to replace it" in line
    assert out.read_text() == "# mine\n"
    spec = imported(tmp_path, "h1:4,h2:4", "--output", "lab.toml", "--force")
    assert [n.name for n in spec.nodes] == ["h1", "h2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab.toml"]  # no temporary left


def test_output_to_stdout_is_a_valid_profile(tmp_path: Path) -> None:
    proc = llmconsole(tmp_path, "cluster", "import", "gpu[1-2]", "--name", "x", "--output", "-")
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "x.toml").write_text(proc.stdout)
    assert llmconsole(tmp_path, "profiles", "validate", "x.toml").returncode == 0
    assert not (tmp_path / "profiles").exists()


@pytest.mark.parametrize(("args", "stdin", "fragments"), [
    (["hosts"], None, ["hosts: line 2, column 9: the slot count 'four' is not a whole number",
                       "give --format if it is another"]),
    (["gpu[01-04"], None, ["line 1, column 4: '[' is never closed"]),
    (["-"], "a;b slots=1\n", ["standard input: line 1, column 2: unexpected character ';'"]),
    (["-"], "-oProxyCommand slots=1\n",
     ["line 1, column 1: host -oProxyCommand is not a hostname or IP address"]),
    (["h1:4,h1:4"], None, ["host h1 is listed twice"]),
    (["h1,h2", "--head", "h9"], None, ["--head h9: no imported node has that name or host "
                                       "(nodes: h[1-2])"]),
    (["h1,h2", "--gpus-from-slots"], None, ["gives no slot counts"]),
    (["nosuch"], None, ["nosuch: no such file; give a hostfile, '-'"]),
    (["-", "--name", "a/b"], "h1\n", ["cannot be a file name; give --output PATH"]),
    (["-"], b"h1\xff\n", ["standard input: not UTF-8 text (byte 2)"]),
])
def test_refusals_are_one_line_and_write_nothing(tmp_path: Path, args: list[str],
                                                 stdin: str | bytes | None,
                                                 fragments: list[str]) -> None:
    (tmp_path / "hosts").write_text("a slots=4\nb slots=four\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    line = refused(tmp_path, *args, stdin=stdin)
    for fragment in fragments:
        assert fragment in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == before
