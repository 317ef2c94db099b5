"""Deterministic PNG outputs drawn with zlib + struct: colour, pattern and shape follow the run's inputs."""

from __future__ import annotations

import hashlib
import re
import struct
import zlib
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 45),
    "blue": (40, 90, 200),
    "green": (50, 150, 70),
    "black": (25, 25, 28),
    "white": (245, 245, 242),
    "grey": (128, 128, 128),
    "gray": (128, 128, 128),
    "navy": (20, 35, 90),
    "beige": (222, 205, 170),
    "yellow": (240, 205, 40),
    "orange": (240, 130, 30),
    "purple": (120, 60, 160),
    "pink": (240, 150, 180),
    "brown": (120, 75, 40),
    "teal": (30, 130, 130),
    "silver": (192, 192, 200),
    "gold": (212, 175, 55),
    "cream": (250, 240, 210),
    "olive": (110, 120, 40),
    "maroon": (110, 20, 35),
    "charcoal": (55, 58, 62),
    "tan": (200, 165, 120),
}
PATTERNS = ("stripes", "checks", "diagonal", "dots")
LONG_SIDE = 384
_WORD = re.compile(r"[a-z]+")


def colour_word(inputs: Mapping[str, Any]) -> str | None:
    """The first common colour named in the inputs (the `Colour` parameter first), if any."""
    values = [inputs[k] for k in sorted(inputs, key=lambda k: "colour" not in k.lower() and "color" not in k.lower())]
    for v in values:
        if isinstance(v, str):
            for w in _WORD.findall(v.lower()):
                if w in COLOURS:
                    return str(w)
    return None


def _aspect(inputs: Mapping[str, Any]) -> tuple[int, int]:
    for k, v in inputs.items():
        if "aspect" in k.lower() and isinstance(v, str):
            m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", v)
            if m and int(m.group(1)) > 0 and int(m.group(2)) > 0:
                a, b = int(m.group(1)), int(m.group(2))
                if a >= b:
                    return LONG_SIDE, max(8, LONG_SIDE * b // a)
                return max(8, LONG_SIDE * a // b), LONG_SIDE
    return LONG_SIDE, LONG_SIDE


def image_key(app_id: str, inputs_json: str, index: int, inputs: Mapping[str, Any]) -> tuple[Any, ...]:
    """The hashable description of one output image; equal keys draw equal images."""
    digest = hashlib.sha256(f"{app_id}\x00{inputs_json}\x00{index}".encode()).digest()
    w, h = _aspect(inputs)
    return (digest, colour_word(inputs), w, h, index)


def _tint(c: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    light = sum(c) > 3 * 128
    d = -amount if light else amount
    return (max(0, min(255, c[0] + d)), max(0, min(255, c[1] + d)), max(0, min(255, c[2] + d)))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(width: int, height: int, rows: list[bytes], text: dict[str, str] | None = None) -> bytes:
    """An 8-bit RGB PNG from raw rows of 3*width bytes each (filter type 0)."""
    raw = b"".join(b"\x00" + r for r in rows)
    out = [b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))]
    for k, v in (text or {}).items():
        out.append(_chunk(b"tEXt", k.encode("latin-1", "replace") + b"\x00" + v.encode("latin-1", "replace")))
    out.append(_chunk(b"IDAT", zlib.compress(raw, 6)))
    out.append(_chunk(b"IEND", b""))
    return b"".join(out)


@lru_cache(maxsize=512)
def render_png(key: tuple[Any, ...]) -> bytes:
    """Draw the image described by `image_key` (cached: the same output is served many times)."""
    digest, colour, w, h, index = key
    bg = COLOURS[colour] if colour else (80 + digest[1] % 150, 80 + digest[2] % 150, 80 + digest[3] % 150)
    fg = _tint(bg, 28)
    accent = (digest[4], digest[5], digest[6])
    if abs(sum(accent) - sum(bg)) < 150:
        accent = _tint(bg, 110)
    pattern = PATTERNS[digest[0] % len(PATTERNS)]
    period = 12 + digest[7] % 20
    bgp, fgp, acp = bytes(bg), bytes(fg), bytes(accent)
    row_bg, row_fg = bgp * w, fgp * w
    rows: list[bytes] = []
    if pattern == "diagonal":
        base = (bgp * period + fgp * period) * (w // (2 * period) + 3)
    elif pattern == "checks":
        cells = (bgp * period + fgp * period) * (w // (2 * period) + 2)
        check_a, check_b = cells[: 3 * w], cells[3 * period : 3 * period + 3 * w]
    cx, cy = w // 2, h // 2
    radius = min(w, h) * 3 // 10
    border = max(3, min(w, h) // 60)
    for y in range(h):
        if pattern == "stripes":
            row = bytearray(row_bg if (y // period) % 2 == 0 else row_fg)
        elif pattern == "checks":
            row = bytearray(check_a if (y // period) % 2 == 0 else check_b)
        elif pattern == "diagonal":
            off = 3 * (y % (2 * period))
            row = bytearray(base[off : off + 3 * w])
        else:
            row = bytearray(row_bg)
            dy = (y % (2 * period)) - period
            r = period // 3
            if abs(dy) <= r:
                half = int((r * r - dy * dy) ** 0.5)
                for x0 in range(period, w, 2 * period):
                    a, b = max(0, x0 - half), min(w, x0 + half + 1)
                    row[3 * a : 3 * b] = fgp * (b - a)
        # the "product": a disc for the first output, a diamond for the others
        dy = y - cy
        if abs(dy) <= radius:
            half = int((radius * radius - dy * dy) ** 0.5) if index == 0 else radius - abs(dy)
            a, b = max(0, cx - half), min(w, cx + half + 1)
            row[3 * a : 3 * b] = acp * (b - a)
        if y < border or y >= h - border:
            row = bytearray(acp * w)
        else:
            row[: 3 * border] = acp * border
            row[3 * (w - border) :] = acp * border
        rows.append(bytes(row))
    return encode_png(w, h, rows, {"Software": "lamina-emulator", "Pattern": pattern, "Colour": colour or ""})
