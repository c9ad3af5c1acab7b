"""The test hosts themselves (chaos/hosts.py): a host added on
request answers at the next loopback address with its key known, and
closing them leaves no sshd, no process naming their folder, no folder."""

from __future__ import annotations

import psutil

from chaos.hosts import SshHosts, processes_naming


def test_hosts_on_request_and_nothing_survives_close() -> None:
    with SshHosts.start(1) as hosts:
        third = hosts.add()
        assert (third.name, third.address) == ("node2", "127.0.0.3")
        for h in hosts.hosts:
            out = hosts.ssh(h.name, "sh", "-c", "echo $SSH_CONNECTION")
            assert out.returncode == 0, out.stderr
            assert out.stdout.split()[2:] == [h.address, str(hosts.port)]
        assert hosts.known_hosts.read_text().splitlines() == [
            hosts.known_line(h.name).strip() for h in hosts.hosts]
        listeners = [h.proc.pid for h in hosts.hosts if h.proc is not None]
        assert len(listeners) == 2
        folder = hosts.folder
    assert not folder.exists() and not processes_naming(str(folder))
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                   for p in listeners)
