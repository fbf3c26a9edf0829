"""Exceptions the library raises; the CLI turns each into a one-line message."""


class WhisfusionError(Exception):
    """Base class: a problem the user can fix, reported without a traceback."""


class ConfigError(WhisfusionError, ValueError):
    """A bad option, preset, schedule or model configuration."""


class CheckpointError(WhisfusionError):
    """A model directory or hub repo that cannot be loaded."""


class AudioError(WhisfusionError):
    """A file that is missing, unreadable, not media, or has no audio stream."""
