"""siprecd: a SIPREC recording server that transcribes calls as they happen."""

__version__ = "0.1.0"
