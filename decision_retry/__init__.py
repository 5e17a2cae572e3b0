"""decision-retry: rewind a coding agent to its uncertain token and resample from there."""

__version__ = "0.1.0"
