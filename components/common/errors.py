"""Errors shared by every configuration module (kept apart so stage configs can import it without cycles)."""


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""
