"""Fixtures of the cluster tests: `ssh_hosts`, real sshd test hosts on
127.0.0.2 and 127.0.0.3 for the whole session (chaos/hosts.py), and
`cluster_engine`, a real engine daemon whose ssh uses their config."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from chaos.hosts import SshHosts


@pytest.fixture(scope="session")
def ssh_hosts() -> Iterator[SshHosts]:
    """Two started hosts, node1 and node2, shared by the session: a test that
    stops, crashes or hangs one starts or resumes it before it ends."""
    with SshHosts.start(2) as hosts:
        yield hosts
