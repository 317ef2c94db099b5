"""Counting what a pass over the rows has seen, in memory that does not grow with the rows: 16-byte digests
in a small dict, spilled past a threshold to a temporary on-disk SQLite index fronted by a Bloom filter.
"""

from __future__ import annotations

import sqlite3
from types import TracebackType

__all__ = ["DigestIndex"]

_COUNT_BITS = 32
_COUNT_MASK = (1 << _COUNT_BITS) - 1


class DigestIndex:
    """digest -> (how many times seen, a value stored with the first sighting), for key uniqueness (the value is
    the first row's number) and occurrence numbers (the count).

    Up to `memory_entries` digests live in a dict (~100 bytes each, ~26 MB at the default). Past that, every digest
    moves to a private temporary SQLite database on disk (deleted on close; its page cache capped at 8 MB) and new
    ones are buffered `batch` at a time, sorted before they are written; a Bloom filter of fixed size (`bloom_bits`,
    32 MB at the default: about 2% false "maybe"s at 30M digests) answers "never seen" without touching the disk
    for almost every new digest. So memory stays bounded however many rows there are; only the file grows
    (~40 bytes a digest).
    """

    def __init__(self, *, memory_entries: int = 262_144, batch: int = 65_536, bloom_bits: int = 1 << 28) -> None:
        if bloom_bits & (bloom_bits - 1):
            raise ValueError("bloom_bits must be a power of two")
        self._limit = memory_entries
        self._batch = batch
        self._bloom_bits = bloom_bits
        self._mem: dict[bytes, int] = {}  # digest -> first value << 32 | count
        self._db: sqlite3.Connection | None = None
        self._bloom = bytearray()
        self._mask = bloom_bits - 1
        self.spilled = False

    def __enter__(self) -> DigestIndex:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        self._mem = {}
        self._bloom = bytearray()

    def see(self, digest: bytes, value: int = 0) -> tuple[int, int]:
        """Record one more sighting of `digest` (16 bytes); return (sightings before this one, the value stored
        with the first sighting, which is `value` when this is the first)."""
        mem = self._mem
        packed = mem.get(digest)
        if packed is not None:
            mem[digest] = packed + 1
            return packed & _COUNT_MASK, packed >> _COUNT_BITS
        if self._db is None:
            mem[digest] = (value << _COUNT_BITS) | 1
            if len(mem) > self._limit:
                self._spill()
            return 0, value
        before = 0
        if self._maybe_seen(digest):
            row = self._db.execute("SELECT v FROM seen WHERE d = ?", (digest,)).fetchone()
            if row is not None:
                packed = int(row[0])
                before, value = packed & _COUNT_MASK, packed >> _COUNT_BITS
        mem[digest] = (value << _COUNT_BITS) | (before + 1)
        if len(mem) >= self._batch:
            self._flush()
        return before, value

    # ------------------------------------------------------------------ spilling

    def _maybe_seen(self, digest: bytes) -> bool:
        """Bloom filter test-and-set with three probes taken from the digest itself (already uniform)."""
        h = int.from_bytes(digest, "little")
        bits = self._bloom
        mask = self._mask
        a, b, c = h & mask, (h >> 40) & mask, (h >> 80) & mask
        seen = bits[a >> 3] >> (a & 7) & bits[b >> 3] >> (b & 7) & bits[c >> 3] >> (c & 7) & 1
        bits[a >> 3] |= 1 << (a & 7)
        bits[b >> 3] |= 1 << (b & 7)
        bits[c >> 3] |= 1 << (c & 7)
        return bool(seen)

    def _spill(self) -> None:
        # "": a private temporary database on disk. One pass may be resumed on another thread (never two at once)
        db = sqlite3.connect("", isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode = OFF")
        db.execute("PRAGMA synchronous = OFF")
        db.execute("PRAGMA cache_size = -8192")  # KiB: the page cache is the database's only memory
        db.execute("CREATE TABLE seen (d BLOB PRIMARY KEY, v INTEGER NOT NULL) WITHOUT ROWID")
        self._db = db
        self._bloom = bytearray(self._bloom_bits // 8)
        self.spilled = True
        for digest in self._mem:
            self._maybe_seen(digest)
        self._flush()

    def _flush(self) -> None:
        assert self._db is not None
        rows = sorted(self._mem.items())  # sorted: the B-tree is then written mostly in order
        self._mem = {}
        self._db.execute("BEGIN")
        self._db.executemany("INSERT INTO seen (d, v) VALUES (?, ?) ON CONFLICT (d) DO UPDATE SET v = excluded.v", rows)
        self._db.execute("COMMIT")
