"""Timestamps: the manifest's and the API's ISO-8601 forms and epoch seconds."""

from __future__ import annotations

import re

from lamina_batch.times import iso_from_epoch, parse_timestamp, utcnow_iso


def test_parse_timestamp_accepts_z_and_naive() -> None:
    """Server and manifest timestamps parse to the same epoch whether written with Z, offset or naive."""
    a = parse_timestamp("2024-05-01T10:00:00Z")
    assert a is not None
    assert parse_timestamp("2024-05-01T10:00:00+00:00") == a
    assert parse_timestamp("2024-05-01T10:00:00") == a
    assert parse_timestamp("garbage") is None
    assert parse_timestamp(None) is None


def test_iso_round_trip_and_now() -> None:
    """Epoch seconds written as ISO-8601 UTC with milliseconds and Z read back to the same instant."""
    text = iso_from_epoch(1714557600.25)
    assert text == "2024-05-01T10:00:00.250Z"
    assert parse_timestamp(text) == 1714557600.25
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", utcnow_iso())
