"""The one error a tool raises: a refusal the model can read, before or instead of a run."""

from __future__ import annotations


class ToolRefused(Exception):
    """Nothing ran (or the database refused it); ``message`` names the problem for the model."""

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
