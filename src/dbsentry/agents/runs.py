"""Run correlation: which agent run a statement belongs to, carried to every audit record.

The tools prefix each statement with a sqlcommenter comment (``/* run_id='...',... */``);
the proxy's audit reads such comments into the statement record's ``correlation`` (docs/
audit.md, "Correlation"), and approval keys ignore comments, so the prefix changes neither
the decision nor what an approval covers.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

RUN_ID_META_KEYS = ("io.dbsentry/run_id", "run_id")
_RUN_ID = re.compile(r"^[A-Za-z0-9.:-]{1,128}$")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
_PRINTABLE = re.compile(r"[^\x21-\x7e]")


def clean_run_id(value: str) -> str:
    """``value`` when it is a plain id (letters, digits, ``.:-``, up to 128), else a digest of it."""
    if _RUN_ID.match(value):
        return value
    return "h-" + hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()[:32]


def new_run_id() -> str:
    return "run-" + uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class RunContext:
    run_id: str
    session: str | None = None
    client: str | None = None
    traceparent: str | None = None
    call_id: str | None = None  # this tool call's, to find its own audit record

    def comment(self) -> str:
        """The sqlcommenter comment that carries this run onto the statement's audit record."""
        pairs = {
            "run_id": self.run_id,
            "mcp_session": self.session,
            "mcp_client": self.client,
            "traceparent": self.traceparent,
            "mcp_call": self.call_id,
        }
        body = ",".join(f"{k}='{quote(v, safe='')}'" for k, v in pairs.items() if v)
        return f"/* {body} */\n"

    def as_dict(self) -> dict[str, str]:
        out = {"run_id": self.run_id}
        for key, value in (("mcp_session", self.session), ("mcp_client", self.client), ("traceparent", self.traceparent)):
            if value:
                out[key] = value
        return out


def run_context(
    meta: Mapping[str, Any] | None,
    *,
    session_id: str | None,
    client_name: str | None,
    client_version: str | None,
    fallback_run_id: str,
) -> RunContext:
    """The run of one tool call: the client's ``_meta`` run id, else the trace id of its
    ``traceparent``, else the MCP session id, else ``fallback_run_id``."""
    meta = meta or {}
    traceparent = None
    raw_tp = meta.get("traceparent")
    if isinstance(raw_tp, str):
        m = _TRACEPARENT.match(raw_tp.strip().lower())
        if m is not None and m.group(1) != "0" * 32 and m.group(2) != "0" * 16:
            traceparent = raw_tp.strip().lower()
    run_id = None
    for key in RUN_ID_META_KEYS:
        value = meta.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            run_id = clean_run_id(str(value))
            break
    if run_id is None and traceparent is not None:
        run_id = traceparent.split("-")[1]
    session = clean_run_id(session_id) if session_id else None
    if run_id is None:
        run_id = session or fallback_run_id
    client = None
    if client_name:
        client = _PRINTABLE.sub("_", f"{client_name}/{client_version or '?'}")[:128]
    return RunContext(run_id, session, client, traceparent, uuid.uuid4().hex[:16])
