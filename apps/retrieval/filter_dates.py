"""Reading the dates of the search filters (``modified_after``/``modified_before``). Free of Django, so the
schemathesis hooks (tests/schemathesis_hooks.py, run inside schemathesis) read dates exactly as the server does."""

from datetime import UTC, date, datetime, time


def parse_moment(value: str) -> datetime:
    """An ISO 8601 date (midnight UTC) or date-time (UTC when it names no offset), as an aware UTC datetime.
    Raises ValueError when it is neither, OverflowError when it is out of range once converted to UTC."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        parsed = datetime.combine(date.fromisoformat(value), time.min)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
