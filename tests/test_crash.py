"""Crash points for the kill -9 tests: the environment variable's `name[:N]` form."""

from __future__ import annotations

from lamina_batch.crash import _parse_crashpoint


def test_crashpoint_spec_parsing() -> None:
    """LAMINA_BATCH_CRASHPOINT accepts `name` (first hit) and `name:N` (N-th hit)."""
    assert _parse_crashpoint(None) is None
    assert _parse_crashpoint("") is None
    assert _parse_crashpoint("after-intent") == ("after-intent", 1)
    assert _parse_crashpoint("after-reply:3") == ("after-reply", 3)
    assert _parse_crashpoint("after-id:0") == ("after-id", 1)
    assert _parse_crashpoint("after-id:x") == ("after-id", 1)
