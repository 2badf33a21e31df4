"""Errors shared by every configuration module (kept apart so stage configs can import it without cycles)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


def require(condition: bool, message: str, section: str | None = None) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds.

    Args:
        condition: What a valid configuration satisfies.
        message: What is wrong, in the user's terms (the value and the accepted range).
        section: Config section the message is prefixed with, e.g. ``"face_tracking"``.

    Raises:
        ConfigError: If ``condition`` is false.
    """
    if not condition:
        raise ConfigError(f"{section}: {message}" if section else message)
