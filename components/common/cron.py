"""KFP (robfig/cron) schedule expressions: 6 fields, seconds first, or a descriptor such as ``@monthly``.

Used by ``clipsync schedule`` (pipelines/schedule.py) and by the ``fleet.cron`` setting, which is checked when the
config is built; standard library only.
"""

from __future__ import annotations


class CronError(ValueError):
    """A cron expression KFP would not accept, with the offending field."""


_DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
_DAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]
# (name, lowest, highest, names allowed)
_FIELDS = (
    ("second", 0, 59, ()),
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 6, _DAYS),
)


def _check_value(token: str, low: int, high: int, names: tuple[str, ...], what: str, expr: str) -> None:
    if token.upper() in names:
        return
    if not token.isdigit() or not low <= int(token) <= high:
        raise CronError(f"cron {expr!r}: {what} value {token!r} is outside {low}-{high}")


def validate_cron(expr: str) -> str:
    """Check a KFP (robfig/cron) expression: 6 fields, seconds first, or a descriptor such as ``@monthly``.

    Args:
        expr: The expression.

    Returns:
        The expression with its whitespace normalized.

    Raises:
        CronError: With the offending field.
    """
    text = " ".join(str(expr).split())
    if text in _DESCRIPTORS:
        return text
    parts = text.split(" ")
    if len(parts) != 6:
        hint = " (KFP wants seconds first: '0 ' + a 5-field cron)" if len(parts) == 5 else ""
        raise CronError(f"cron {expr!r} has {len(parts)} fields; KFP needs 6{hint}")
    for part, (what, low, high, names) in zip(parts, _FIELDS, strict=True):
        for item in part.split(","):
            if item == "":
                raise CronError(f"cron {expr!r}: empty list item in the {what} field")
            base, _, step = item.partition("/")
            if step and (not step.isdigit() or int(step) == 0):
                raise CronError(f"cron {expr!r}: bad step {step!r} in the {what} field")
            if base in ("*", "?"):
                if base == "?" and what not in ("day of month", "day of week"):
                    raise CronError(f"cron {expr!r}: '?' is only allowed for the day fields")
                continue
            start, dash, end = base.partition("-")
            _check_value(start, low, high, names, what, expr)
            if dash:
                _check_value(end, low, high, names, what, expr)
    return text
