"""Pure shaping of what the API returns: sessions, data access, agent activity.

No I/O here: callers pass records (dicts, as ``audit.query.statement_row`` makes them, or
decoded session events) and live session objects; tests feed them directly.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dbsentry.audit.query import iso
from dbsentry.engines.postgres.sql.system_relations import CATALOG_RELATIONS

_REFUSED = frozenset({"deny", "require_approval", "pending_approval", "refused"})
_CATALOG_SCHEMAS = ("pg_catalog.", "information_schema.", "pg_toast.")


def is_catalog_table(table: str) -> bool:
    """A system catalog or information_schema view: what psql's ``\\d``, drivers and ORMs
    read to learn the schema.  Unqualified names of pg_catalog's relations are too
    (pg_catalog comes first on every search_path)."""
    name = table.replace('"', "").lower()
    return name.startswith(_CATALOG_SCHEMAS) or ("." not in name and name in CATALOG_RELATIONS)


def _user_tables(row: Mapping[str, Any], include_catalog: bool) -> tuple[str, ...] | None:
    """The tables of a statement record worth showing in data-access views: all of them
    with ``include_catalog``, else the non-catalog ones; None when the statement read
    catalogs only (and no classified data), so it is left out."""
    tables = tuple(str(t) for t in row.get("tables") or ())
    if include_catalog:
        return tables
    kept = tuple(t for t in tables if not is_catalog_table(t))
    if tables and not kept and not row.get("data_classes") and not row.get("masked_classes"):
        return None
    return kept


def _attr(obj: Any, *path: str) -> Any:
    for name in path:
        if obj is None:
            return None
        obj = getattr(obj, name, None)
    return obj


def live_session_row(obj: Any) -> dict[str, Any] | None:
    """A live session (a ``ClientConnection`` or its ``Session``) as a JSON dict.

    Sessions still authenticating have no identity yet and are left out (None).  A mapping is
    a row already (another worker's session, made by this function there).
    """
    if isinstance(obj, Mapping):
        return dict(obj)
    session = getattr(obj, "session", obj)
    identity = getattr(session, "identity", None)
    if identity is None:
        return None
    state = getattr(session, "state", None)
    startup = getattr(session, "startup", None)
    app_name = None
    upstream = getattr(session, "upstream_params", None) or {}
    if isinstance(upstream, Mapping):
        app_name = upstream.get("application_name")
    if not app_name and startup is not None:
        getter = getattr(startup, "get", None)
        app_name = getter("application_name") if callable(getter) else None
    audit = getattr(session, "audit", None)
    txn = getattr(session, "txn_status", None)
    return {
        "session_id": getattr(session, "session_id", None),
        "live": True,
        "engine": getattr(session, "engine", "postgres"),
        "identity": identity.name,
        "identity_kind": identity.kind,
        "groups": sorted(identity.groups),
        "connection": getattr(session, "connection_name", None),
        "environment": getattr(audit, "environment", None) or getattr(session, "environment", None),
        "database": getattr(audit, "database", None) or getattr(session, "database", None),
        "client_addr": _attr(session, "client", "address"),
        "tls": bool(_attr(session, "client", "tls") or getattr(session, "tls", False)),
        "tls_version": _attr(session, "client", "tls_version") or getattr(session, "tls_version", None),
        "application_name": app_name or None,
        "state": getattr(state, "value", state),
        "txn_status": {"I": "idle", "T": "in_transaction", "E": "failed_transaction"}.get(
            txn or "", txn
        ),
    }


def node_summaries(workers: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rows of ``/nodes`` (one a live worker, with what it answered) grouped by node:
    its addresses and workers, its freshest heartbeat, its live sessions (None when a worker
    did not answer: the count would be wrong), and readiness (every worker answered and is
    ready).  This node first, then by name."""
    by_node: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for w in workers:
        by_node[str(w.get("node"))].append(w)
    out = []
    for node, rows in by_node.items():
        rows = sorted(rows, key=lambda w: int(w.get("worker") or 0))
        answered = all(w.get("answered") for w in rows)
        ages = [float(w["heartbeat_age_seconds"]) for w in rows if isinstance(w.get("heartbeat_age_seconds"), int | float)]
        out.append(
            {
                "node": node,
                "this_node": any(w.get("this_node") for w in rows),
                "slot": rows[0].get("slot"),
                "addresses": [w.get("address") for w in rows],
                "workers": [w.get("worker") for w in rows],
                "heartbeat_age_seconds": min(ages) if ages else None,
                "sessions": sum(int(w.get("sessions") or 0) for w in rows) if answered else None,
                "answered": answered,
                "ready": answered and all(w.get("ready") is True for w in rows),
                "not_answering": [w.get("worker") for w in rows if not w.get("answered")],
                "not_ready": sorted(
                    {f"w{w.get('worker')}: {name}" for w in rows for name, ok in (w.get("checks") or {}).items() if ok is False}
                ),
            }
        )
    return sorted(out, key=lambda n: (not n["this_node"], n["node"]))


def sessions_from_events(events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Session rows from ``session`` records (opened and closed), newest opening first.

    ``events`` may come in any order; a session whose opening is not among them (it is older
    than the window read) is shown from its closing alone.
    """
    by_id: dict[str, dict[str, Any]] = {}
    for e in events:
        sid = e.get("session_id")
        if not isinstance(sid, str):
            continue
        row = by_id.setdefault(
            sid,
            {
                "session_id": sid,
                "live": False,
                "opened_at": None,
                "closed_at": None,
                "duration_ms": None,
                "end_reason": None,
            },
        )
        for key in (
            "identity",
            "identity_kind",
            "groups",
            "connection",
            "environment",
            "database",
            "client_addr",
            "tls",
            "tls_version",
            "application_name",
        ):
            if row.get(key) is None and e.get(key) is not None:
                row[key] = e.get(key)
        if e.get("event") == "opened":
            row["opened_at"] = iso(e.get("time"))
            row["_t"] = e.get("time")
        elif e.get("event") == "closed":
            row["closed_at"] = iso(e.get("time"))
            row["duration_ms"] = e.get("duration_ms")
            row["end_reason"] = e.get("end_reason")
            row.setdefault("_t", e.get("time"))
    rows = sorted(by_id.values(), key=lambda r: r.get("_t") or 0.0, reverse=True)
    for r in rows:
        r.pop("_t", None)
    return rows


# --- data access -----------------------------------------------------------------------------


def split_column(column: str, tables: tuple[str, ...]) -> tuple[str, str]:
    """(table, column) of a ``columns_read`` entry: ``schema.table.col``, ``table.col`` or a
    bare ``col`` (given to the statement's only table, or to ``?`` when it has several)."""
    table, dot, name = column.rpartition(".")
    if dot:
        return _match_table(table, tables), name
    if len(tables) == 1:
        return tables[0], column
    return "?", column


def _match_table(table: str, tables: tuple[str, ...]) -> str:
    """The statement's own spelling of ``table`` (``users`` -> ``public.users``)."""
    if table in tables:
        return table
    for t in tables:
        if t.rpartition(".")[2] == table:
            return t
    return table


@dataclass(slots=True)
class _Column:
    reads: int = 0
    masked: int = 0
    classes: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Table:
    statements: int = 0
    classes: set[str] = field(default_factory=set)
    columns: dict[str, _Column] = field(default_factory=lambda: defaultdict(_Column))


@dataclass(slots=True)
class _Identity:
    kind: str | None = None
    statements: int = 0
    decisions: Counter[str] = field(default_factory=Counter)
    classes: Counter[str] = field(default_factory=Counter)
    masked_classes: Counter[str] = field(default_factory=Counter)
    refused_classes: Counter[str] = field(default_factory=Counter)
    refused: int = 0
    # allowed statements whose results the masking layer masked (decision stays "allow")
    masked_statements: int = 0
    connections: dict[str, dict[str, _Table]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(_Table))
    )
    first: str | None = None
    last: str | None = None


ClassLookup = Callable[[str | None, str, str], str | None]
"""(connection, table, column) -> data class, from the classification map when there is one."""


class DataAccess:
    """Who touched which data: identity -> connection -> table -> column -> data class.

    Record-level classes (``data_classes`` and ``masked_classes``) are exact; a column gets
    a class when the record pairs it (``masked_columns`` with ``masked_classes``) or the
    classification map names it, so an unmasked read of a classified column still shows.
    Refused statements (denied, or waiting for approval) read nothing: they are counted as
    attempts (``refused``, ``refused_classes``), never as data touched.
    """

    def __init__(self, lookup: ClassLookup | None = None, *, include_catalog: bool = False) -> None:
        self._lookup = lookup
        self._include_catalog = include_catalog
        self._ids: dict[str, _Identity] = defaultdict(_Identity)
        self.statements = 0
        # statements that read only system catalogs, left out unless include_catalog
        self.catalog_statements = 0
        # distinct statements (not statement x class) that read classified data / were masked
        self.classified_statements = 0
        self.masked_statements = 0

    def add(self, row: Mapping[str, Any]) -> None:
        tables = _user_tables(row, self._include_catalog)
        if tables is None:
            self.catalog_statements += 1
            return
        self.statements += 1
        name = str(row.get("identity") or "?")
        ident = self._ids[name]
        ident.kind = row.get("identity_kind") or ident.kind
        ident.statements += 1
        decision = str(row.get("decision") or "unknown")
        ident.decisions[decision] += 1
        when = row.get("time")
        if isinstance(when, str):
            ident.first = when if ident.first is None or when < ident.first else ident.first
            ident.last = when if ident.last is None or when > ident.last else ident.last
        masked_cols = list(row.get("masked_columns") or ())
        masked_cls = list(row.get("masked_classes") or ())
        classes = {*(row.get("data_classes") or ()), *masked_cls}
        if decision in _REFUSED:
            # nothing was read: an attempt, counted apart from the data actually touched
            ident.refused += 1
            for c in classes:
                ident.refused_classes[c] += 1
            return
        for c in classes:
            ident.classes[c] += 1
        if classes:
            self.classified_statements += 1
        if masked_cols or masked_cls:
            self.masked_statements += 1
            if decision != "mask":
                ident.masked_statements += 1
        for c in set(masked_cls):
            ident.masked_classes[c] += 1
        connection = str(row.get("connection") or "?")
        per_table = ident.connections[connection]
        for t in tables:
            per_table[t].statements += 1
        paired: dict[tuple[str, str], str] = {}
        if len(masked_cols) == len(masked_cls):
            for col, cls in zip(masked_cols, masked_cls, strict=True):
                paired[split_column(str(col), tables)] = str(cls)
        for col in row.get("columns_read") or ():
            table, column = split_column(str(col), tables)
            if not self._include_catalog and is_catalog_table(table):
                continue
            entry = per_table[table].columns[column]
            entry.reads += 1
            cls = paired.get((table, column))
            if cls is not None:
                entry.masked += 1
            elif self._lookup is not None:
                cls = self._lookup(row.get("connection"), table, column)
            if cls is not None:
                entry.classes.add(cls)
                per_table[table].classes.add(cls)
        if not row.get("columns_read") and len(tables) == 1 and classes:
            per_table[tables[0]].classes.update(classes)

    def result(self) -> dict[str, Any]:
        identities = []
        links = []
        by_class: dict[str, dict[str, Any]] = {}
        for name, ident in sorted(self._ids.items(), key=lambda kv: -kv[1].statements):
            connections = []
            for conn, tables in sorted(ident.connections.items()):
                connections.append(
                    {
                        "connection": conn,
                        "tables": [
                            {
                                "table": t,
                                "statements": tab.statements,
                                "classes": sorted(tab.classes),
                                "columns": [
                                    {
                                        "column": c,
                                        "reads": col.reads,
                                        "masked": col.masked,
                                        "classes": sorted(col.classes),
                                    }
                                    for c, col in sorted(tab.columns.items())
                                ],
                            }
                            for t, tab in sorted(tables.items())
                        ],
                    }
                )
            identities.append(
                {
                    "identity": name,
                    "kind": ident.kind,
                    "statements": ident.statements,
                    "decisions": dict(ident.decisions),
                    "classes": dict(ident.classes.most_common()),
                    "masked_classes": dict(ident.masked_classes),
                    "refused": ident.refused,
                    "masked_statements": ident.masked_statements,
                    "refused_classes": dict(ident.refused_classes),
                    "first_seen": ident.first,
                    "last_seen": ident.last,
                    "connections": connections,
                }
            )
            for cls in {*ident.classes, *ident.refused_classes}:
                n = ident.classes.get(cls, 0)
                masked = ident.masked_classes.get(cls, 0)
                links.append(
                    {
                        "identity": name,
                        "kind": ident.kind,
                        "class": cls,
                        "statements": n,
                        "masked": masked,
                        "refused": ident.refused_classes.get(cls, 0),
                    }
                )
                agg: dict[str, Any] = by_class.setdefault(
                    cls,
                    {"class": cls, "statements": 0, "masked": 0, "refused": 0, "identities": {}},
                )
                agg["statements"] += n
                agg["masked"] += masked
                agg["refused"] += ident.refused_classes.get(cls, 0)
                if n:
                    agg["identities"][name] = n
        classes = sorted(by_class.values(), key=lambda c: -int(c["statements"]))
        links.sort(
            key=lambda link: (
                -int(link["statements"] or 0),
                str(link["identity"]),
                str(link["class"]),
            )
        )
        return {
            "statements": self.statements,
            "catalog_statements": self.catalog_statements,
            "classified_statements": self.classified_statements,
            "masked_statements": self.masked_statements,
            "identities": identities,
            "classes": classes,
            "links": links,
        }


def agent_summary(
    rows: Iterable[Mapping[str, Any]], *, include_catalog: bool = False
) -> list[dict[str, Any]]:
    """Per agent: statements by decision, connections, tables, data classes, last seen.
    Statements that read only system catalogs are counted apart (``catalog_statements``)
    unless ``include_catalog``."""
    agents: dict[str, dict[str, Any]] = {}
    for row in rows:
        name = str(row.get("identity") or "?")
        a = agents.setdefault(
            name,
            {
                "identity": name,
                "statements": 0,
                "decisions": Counter(),
                "connections": Counter(),
                "tables": Counter(),
                "classes": Counter(),
                "sessions": set(),
                "last_seen": None,
                "first_seen": None,
                "errors": 0,
                "catalog_statements": 0,
            },
        )
        tables = _user_tables(row, include_catalog)
        if row.get("session_id"):
            a["sessions"].add(row["session_id"])
        when = row.get("time")
        if isinstance(when, str):
            if a["last_seen"] is None or when > a["last_seen"]:
                a["last_seen"] = when
            if a["first_seen"] is None or when < a["first_seen"]:
                a["first_seen"] = when
        if tables is None:
            a["catalog_statements"] += 1
            continue
        a["statements"] += 1
        a["decisions"][str(row.get("decision") or "unknown")] += 1
        a["connections"][str(row.get("connection") or "?")] += 1
        for t in tables:
            a["tables"][t] += 1
        for c in {*(row.get("data_classes") or ()), *(row.get("masked_classes") or ())}:
            a["classes"][str(c)] += 1
        if row.get("error"):
            a["errors"] += 1
    out = []
    for a in agents.values():
        decisions: Counter[str] = a["decisions"]
        out.append(
            {
                **a,
                "decisions": dict(decisions),
                "refused": sum(decisions[d] for d in decisions if d not in ("allow", "mask")),
                "connections": dict(a["connections"].most_common()),
                "tables": dict(a["tables"].most_common(20)),
                "classes": dict(a["classes"].most_common()),
                "sessions": len(a["sessions"]),
            }
        )
    out.sort(key=lambda a: a["last_seen"] or "", reverse=True)
    return out


def class_map_rows(maps: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each connection's classification map (masking ``ClassMap``) as rows."""
    out = []
    for connection, cmap in sorted(maps.items()):
        columns = getattr(cmap, "columns", cmap)
        if not isinstance(columns, Mapping):
            continue
        for src, cls in columns.items():
            schema = getattr(src, "schema", None)
            table = getattr(src, "table", None)
            column = getattr(src, "column", None)
            if table is None and isinstance(src, tuple) and len(src) == 3:
                schema, table, column = src
            data_class = getattr(cls, "data_class", cls)
            out.append(
                {
                    "connection": connection,
                    "schema": schema,
                    "table": table,
                    "column": column if column is not None else str(src),
                    "data_class": str(getattr(data_class, "value", data_class)),
                    "source": getattr(cls, "source", None),
                    "evidence": getattr(cls, "evidence", None),
                }
            )
    out.sort(key=lambda r: (r["connection"], str(r["schema"]), str(r["table"]), str(r["column"])))
    return out


def class_lookup(maps: Mapping[str, Any]) -> ClassLookup:
    """A (connection, table, column) -> class lookup over ``class_map_rows``."""
    index: dict[tuple[str, str, str], str] = {}
    for r in class_map_rows(maps):
        table, schema, column = str(r["table"]), str(r["schema"]), str(r["column"])
        index.setdefault((r["connection"], table, column), r["data_class"])
        index.setdefault((r["connection"], f"{schema}.{table}", column), r["data_class"])

    def lookup(connection: str | None, table: str, column: str) -> str | None:
        return index.get((connection or "", table, column))

    return lookup
