"""Per-person access rules the door honours on its own: a validity period and weekly time windows.

Days are calendar days and times are wall-clock times at the door (its local time zone). `valid_from` and
`valid_until` are inclusive ISO dates. A schedule is a comma-separated list of windows `DAYS HH:MM-HH:MM`, DAYS a day
(`mon`), a range (`mon-fri`, `fri-mon`) or `daily`; a window whose end is not after its start runs past midnight
into the next day (`mon-fri 22:00-06:00` covers Saturday 05:00). No schedule means any time of day.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import date, datetime

from edgeface.errors import GalleryError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

NOT_YET_VALID = "not yet valid"
EXPIRED = "expired"
OUTSIDE_SCHEDULE = "outside schedule"
"""The reasons `AccessRules.refusal` gives."""

_WINDOW = re.compile(r"^(?P<days>[a-z]+(?:-[a-z]+)?)\s+(?P<start>\d\d:\d\d)-(?P<end>\d\d:\d\d)$")


def _minutes(text: str, spec: str) -> int:
    hours, minutes = int(text[:2]), int(text[3:])
    if hours == 24 and minutes == 0:
        return 24 * 60
    if hours > 23 or minutes > 59:
        raise GalleryError(f"schedule {spec!r}: {text} is not a time of day (00:00 to 24:00)")
    return 60 * hours + minutes


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


@dataclass(frozen=True)
class Window:
    """Weekdays (0 = Monday) and a time span in minutes after midnight; `end <= start` runs into the next day."""

    days: tuple[int, ...]
    start: int
    end: int

    def contains(self, when: datetime) -> bool:
        """Whether the wall-clock time `when` falls in this window."""
        minute = 60 * when.hour + when.minute
        if self.start < self.end:
            return when.weekday() in self.days and self.start <= minute < self.end
        yesterday = (when.weekday() - 1) % 7
        return (when.weekday() in self.days and minute >= self.start) or (yesterday in self.days and minute < self.end)

    def text(self) -> str:
        """The window as a schedule spells it (`mon-fri 07:00-19:00`)."""
        if len(self.days) == 7:
            days = "daily"
        elif len(self.days) == 1:
            days = DAYS[self.days[0]]
        else:
            days = f"{DAYS[self.days[0]]}-{DAYS[self.days[-1]]}"
        return f"{days} {_clock(self.start)}-{_clock(self.end)}"


def _days(text: str, spec: str) -> tuple[int, ...]:
    if text == "daily":
        return tuple(range(7))
    names = text.split("-")
    if any(name not in DAYS for name in names):
        raise GalleryError(f"schedule {spec!r}: unknown day in {text!r} (use {', '.join(DAYS)}, a range or daily)")
    first, last = DAYS.index(names[0]), DAYS.index(names[-1])
    return tuple((first + i) % 7 for i in range((last - first) % 7 + 1))


def parse_schedule(spec: str) -> tuple[Window, ...]:
    """The windows of a schedule such as `mon-fri 07:00-19:00, sat 09:00-13:00`; '', 'always' or 'none' gives none
    (any time)."""
    text = spec.strip().lower()
    if text in ("", "always", "none"):
        return ()
    windows = []
    for part in text.split(","):
        found = _WINDOW.match(part.strip())
        if found is None:
            raise GalleryError(f"schedule {spec!r}: {part.strip()!r} is not 'DAYS HH:MM-HH:MM' "
                               "(e.g. mon-fri 07:00-19:00)")
        start, end = _minutes(found["start"], spec), _minutes(found["end"], spec)
        if start == 24 * 60:
            raise GalleryError(f"schedule {spec!r}: a window cannot start at 24:00")
        windows.append(Window(_days(found["days"], spec), start, end))
    return tuple(windows)


def parse_day(text: str, what: str) -> date:
    """An ISO date (`2027-01-31`), or a GalleryError naming `what`."""
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise GalleryError(f"{what}: {text!r} is not a date (YYYY-MM-DD)") from None


@dataclass(frozen=True)
class AccessRules:
    """When a person may enter: from `valid_from` to `valid_until` (inclusive days), inside `schedule` if any."""

    valid_from: date | None = None
    valid_until: date | None = None
    schedule: tuple[Window, ...] = ()

    def __post_init__(self) -> None:
        if self.valid_from is not None and self.valid_until is not None and self.valid_until < self.valid_from:
            raise GalleryError(f"valid until {self.valid_until} is before valid from {self.valid_from}")

    def refusal(self, when: datetime) -> str | None:
        """None if the rules let the person in at `when` (naive: the door's local time), else the reason."""
        local = when.astimezone().replace(tzinfo=None) if when.tzinfo is not None else when
        if self.valid_from is not None and local.date() < self.valid_from:
            return NOT_YET_VALID
        if self.valid_until is not None and local.date() > self.valid_until:
            return EXPIRED
        if self.schedule and not any(window.contains(local) for window in self.schedule):
            return OUTSIDE_SCHEDULE
        return None

    def columns(self) -> tuple[str | None, str | None, str | None]:
        """(valid_from, valid_until, schedule) as the gallery stores them: ISO dates and a JSON list of windows."""
        schedule = json.dumps([window.text() for window in self.schedule]) if self.schedule else None
        return (self.valid_from.isoformat() if self.valid_from else None,
                self.valid_until.isoformat() if self.valid_until else None, schedule)

    @classmethod
    def from_columns(cls, valid_from: str | None, valid_until: str | None, schedule: str | None) -> AccessRules:
        """The rules from their stored form (`columns`); a GalleryError if any part is malformed."""
        windows: tuple[Window, ...] = ()
        if schedule is not None:
            try:
                texts = json.loads(schedule)
            except json.JSONDecodeError:
                raise GalleryError(f"schedule {schedule!r} is not a JSON list of windows") from None
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise GalleryError(f"schedule {schedule!r} is not a JSON list of windows")
            windows = parse_schedule(", ".join(texts)) if texts else ()
        return cls(parse_day(valid_from, "valid from") if valid_from is not None else None,
                   parse_day(valid_until, "valid until") if valid_until is not None else None, windows)

    def describe(self) -> str:
        """One human line: `2026-01-01..2027-01-31, mon-fri 07:00-19:00` (or `always`)."""
        parts = []
        if self.valid_from or self.valid_until:
            parts.append(f"{self.valid_from or ''}..{self.valid_until or ''}")
        parts.extend(window.text() for window in self.schedule)
        return ", ".join(parts) or "always"


ALWAYS = AccessRules()

