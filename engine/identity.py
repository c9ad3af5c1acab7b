"""Who is asking: a uid from the socket's peer credentials (never anything
the client says), and its name on this machine."""

from __future__ import annotations

import functools
import pwd
from dataclasses import dataclass


@dataclass(frozen=True)
class Caller:
    """Who is asking, from the socket's peer credentials."""

    uid: int
    name: str

    @classmethod
    def from_uid(cls, uid: int) -> Caller:
        return cls(uid, user_name(uid))


@functools.lru_cache(maxsize=1024)
def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
