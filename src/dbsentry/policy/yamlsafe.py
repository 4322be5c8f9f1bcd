"""YAML read within limits: aliases, nesting and expanded size are counted as the parser
emits events, before any node is composed, constructed or walked.

An alias refers to a node already read, so a few hundred bytes of doubling aliases
("billion laughs") describe a tree with millions of nodes.  Composing it is cheap (the
nodes are shared), but everything that walks it afterwards (line numbers, validation)
pays the expanded size.  Counting events is O(text): each alias adds the expanded size
of the node it names, computed when that node's events ended, so the expanded size is
known without expanding anything, and the reading stops at the first limit crossed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

#: Anchors are handy for a shared ``match`` block; a policy never needs more than this.
MAX_ALIASES = 100
#: A policy is a few levels deep (rules -> rule -> match -> list -> value).
MAX_DEPTH = 32
#: Nodes in the document with every alias expanded: far above a 1 MiB policy.
MAX_NODES = 200_000


class YAMLLimitError(yaml.MarkedYAMLError):
    """The text crosses one of the limits; ``problem`` names it."""


@dataclass(slots=True)
class _Open:
    anchor: str | None
    nodes: int = 1  # the collection itself


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts every event it hands to the composer."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._open: list[_Open] = []
        self._sizes: dict[str, int] = {}
        self._aliases = 0

    def get_event(self) -> Any:
        event = super().get_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                self._refuse(event, f"more than {MAX_ALIASES} YAML aliases (the limit)")
            if any(o.anchor is not None and o.anchor == event.anchor for o in self._open):
                # an alias inside the node it names: a cycle, infinitely deep to anything
                # that walks it (line numbers, validation, every consumer of the value)
                self._refuse(event, f"a YAML alias (*{event.anchor}) inside the node it names (a cycle)")
            self._add(event, self._sizes.get(event.anchor or "", 1))
        elif isinstance(event, yaml.ScalarEvent):
            if event.anchor is not None:
                self._sizes[event.anchor] = 1
            self._add(event, 1)
        elif isinstance(event, yaml.CollectionStartEvent):
            if len(self._open) >= MAX_DEPTH:
                self._refuse(event, f"YAML nested deeper than {MAX_DEPTH} levels (the limit)")
            self._open.append(_Open(event.anchor))
        elif isinstance(event, yaml.CollectionEndEvent) and self._open:
            done = self._open.pop()
            if done.anchor is not None:
                self._sizes[done.anchor] = done.nodes
            self._add(event, done.nodes)
        return event

    def _add(self, event: yaml.Event, nodes: int) -> None:
        if not self._open:
            total = nodes  # the document is this one node
        else:
            self._open[-1].nodes += nodes
            total = sum(o.nodes for o in self._open)
        if total > MAX_NODES:
            self._refuse(
                event, f"YAML expands to more than {MAX_NODES} nodes with its aliases (the limit)"
            )

    @staticmethod
    def _refuse(event: yaml.Event, problem: str) -> None:
        raise YAMLLimitError(problem=problem, problem_mark=event.start_mark)  # type: ignore[arg-type]


def compose_bounded(text: str) -> tuple[yaml.Node | None, Any]:
    """The document's node graph and its Python value, read within the limits above.

    Raises ``yaml.YAMLError`` (``YAMLLimitError`` for a limit) like ``yaml.safe_load``.
    """
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    return node, data


def load_bounded(text: str) -> Any:
    """``yaml.safe_load`` within the limits above."""
    return compose_bounded(text)[1]
