"""Moved to chaos.engine_handle; this alias keeps tests written before the move importing
(import from chaos.engine_handle in new code)."""

from chaos.engine_handle import *  # noqa: F403
