"""Parse rate limits like ``20/min`` (channels and AI_USER_RATE_LIMIT)."""

from __future__ import annotations

_RATE_PERIODS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600}
_RATE_PERIODS["d"] = _RATE_PERIODS["day"] = 86400


def rate_limit_parse(value: str) -> tuple[int, int] | None:
    """Return (count, seconds) of a limit like ``20/min``; None when disabled."""
    if not value or value.strip() in ("0", "off", "none"):
        return None
    count, _, period = value.strip().partition("/")
    seconds = _RATE_PERIODS.get(period.strip().lower() or "min")
    if seconds is None or not count.strip().isdigit():
        raise ValueError(f"rate limit {value!r} is not like '20/min'")
    return int(count), seconds
