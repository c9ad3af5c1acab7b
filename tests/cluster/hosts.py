"""Moved to chaos.hosts; this alias keeps tests written before the move importing
(import from chaos.hosts in new code)."""

from chaos.hosts import *  # noqa: F403
