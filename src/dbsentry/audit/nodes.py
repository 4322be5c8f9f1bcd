"""Node ids, and the logs of a node: its own, its workers' (``<node>-w<k>``) and its tools'
(``<node>-tools``)."""

from __future__ import annotations


def tools_node(node: str) -> str:
    """The node id of ``node``'s tools log (at most 64 characters, never ``node`` itself)."""
    return f"{node[:58]}-tools"


def log_of(name: str, node: str) -> bool:
    """Whether the log named ``name`` is one of ``node``'s logs."""
    if name == node or name == tools_node(node):
        return True
    rest = name[len(node) :] if name.startswith(node) else ""
    return rest.startswith("-w") and rest[2:].isascii() and rest[2:].isdigit()
