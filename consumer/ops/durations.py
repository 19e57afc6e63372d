"""Durations on the command line (``2h``, ``15m``, ``1h30m``, ``PT2H``) and in reports."""

from __future__ import annotations

import math
import re

_UNITS: dict[str, float] = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SHORT = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_ISO = re.compile(
    r"P(?:(?P<d>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?"
)


def parse_duration(text: str) -> float:
    """Seconds in ``text``: unit-suffixed parts (``90s``, ``15m``, ``2h``, ``1d``, ``1h30m``,
    ``500ms``), an ISO 8601 duration as ``kafka-consumer-groups --by-duration`` takes
    (``PT2H``, ``P1DT30M``), or plain seconds (``900``). Raises ``ValueError``."""
    value = text.strip()
    if not value:
        raise ValueError("empty duration")
    try:
        seconds = float(value)
    except ValueError:
        seconds = _parse_units(value)
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError(f"invalid duration {text!r}")
    return seconds


def _parse_units(value: str) -> float:
    iso = _ISO.fullmatch(value.upper())
    if iso is not None and value.upper() not in ("P", "PT") and not value.upper().endswith("T"):
        parts = iso.groupdict()
        return sum(float(parts[k] or 0) * _UNITS[k] for k in ("d", "h", "m", "s"))
    lowered = value.lower()
    matches = list(_SHORT.finditer(lowered))
    if not matches or "".join(m.group(0) for m in matches) != lowered:
        raise ValueError(
            f"invalid duration {value!r}: use e.g. 90s, 15m, 2h, 1d, 1h30m or PT2H"
        )
    return sum(float(m.group(1)) * _UNITS[m.group(2)] for m in matches)


def format_duration(seconds: float) -> str:
    """Short human form: ``0s``, ``42.3s``, ``5m12s``, ``3h07m``, ``2d04h``."""
    tenths = round(seconds, 1)
    if tenths < 60:
        return f"{tenths:.1f}s" if tenths % 1 else f"{int(tenths)}s"
    whole = round(seconds)
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"
