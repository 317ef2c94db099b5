"""Timestamps as the manifest writes them and the API sends them (ISO-8601 UTC) and as epoch seconds."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["iso_from_epoch", "parse_timestamp", "utcnow_iso"]


def parse_timestamp(value: str | None) -> float | None:
    """Epoch seconds of an ISO-8601 timestamp (naive means UTC), or None if absent or unparsable."""
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def iso_from_epoch(epoch: float) -> str:
    """Epoch seconds as ISO-8601 UTC with milliseconds and `Z`."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utcnow_iso() -> str:
    """Now as ISO-8601 UTC with milliseconds and `Z` (reconcile compares it with the API's `createdAt`)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
