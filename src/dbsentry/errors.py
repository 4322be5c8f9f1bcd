"""Errors every layer may raise and the shell handles alike."""

from __future__ import annotations


class ProtocolError(Exception):
    """The peer broke the protocol; the connection cannot continue."""

    sqlstate = "08P01"
