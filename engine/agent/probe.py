"""What an agent answers to `probe` (`llmconsole nodes check`): its clock,
the free disk under its root, and whether each peer answers over ssh the
way horovodrun will reach it from here: BatchMode, strict host keys, the
peer's port, user, identity and known_hosts, no forwarding. Checked as the
agent's user; a job runs as its owner, whose keys must reach the peers too.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from engine.agent.protocol import Peer, Probe, ProbeResult

PEER_TIMEOUT_S = 15.0  # one peer's whole check: connect (ConnectTimeout) plus login
PEER_CONNECT_TIMEOUT_S = 5


def peer_check_argv(peer: Peer, ssh: str = "ssh") -> list[str]:
    """`ssh ... HOST true`, strict: an unknown or changed host key fails."""
    argv = [ssh, "-T", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"ConnectTimeout={PEER_CONNECT_TIMEOUT_S}", "-o", "ForwardAgent=no",
            "-o", "ForwardX11=no", "-o", "ClearAllForwardings=yes"]
    if peer.port is not None:
        argv += ["-p", str(peer.port)]
    if peer.user is not None:
        argv += ["-l", peer.user]
    if peer.identity is not None:
        argv += ["-i", str(Path(peer.identity).expanduser()), "-o", "IdentitiesOnly=yes"]
    if peer.known_hosts is not None:
        argv += ["-o", f"UserKnownHostsFile={Path(peer.known_hosts).expanduser()}"]
    return [*argv, "--", peer.host, "true"]


def check_peer(peer: Peer) -> dict[str, Any]:
    started = time.monotonic()
    try:
        done = subprocess.run(peer_check_argv(peer), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=PEER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"host": peer.host, "ok": False, "seconds": PEER_TIMEOUT_S,
                "detail": f"no answer within {PEER_TIMEOUT_S:g} s"}
    except OSError as err:
        return {"host": peer.host, "ok": False, "seconds": 0.0,
                "detail": f"cannot run ssh: {err}"}
    seconds = round(time.monotonic() - started, 3)
    if done.returncode == 0:
        return {"host": peer.host, "ok": True, "seconds": seconds, "detail": "reachable"}
    last = (done.stderr.strip().splitlines() or [f"ssh exited {done.returncode}"])[-1]
    return {"host": peer.host, "ok": False, "seconds": seconds, "detail": last[:300]}


def answer(probe: Probe, root: Path) -> ProbeResult:
    received = time.time()  # the clock as the probe arrived, before the slow peer checks
    try:
        free = round(shutil.disk_usage(root).free / 1e9, 2)
    except OSError:
        free = None
    peers = tuple(check_peer(p) for p in probe.peers)
    return ProbeResult(probe.id, received, str(root), free, peers)
