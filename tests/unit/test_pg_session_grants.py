"""Just-in-time grants in the session: decisions follow the grants the identity has now."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from dbsentry.config import parse_config
from dbsentry.engines.postgres.session import commands as c
from dbsentry.engines.postgres.session.events import ClientData, PasswordVerified, UpstreamData
from dbsentry.engines.postgres.session.governance import Governor
from dbsentry.engines.postgres.session.pg import ClientInfo, Session
from dbsentry.engines.postgres.session.upstream import UpstreamReady
from dbsentry.engines.postgres.wire import codec
from dbsentry.engines.postgres.wire import messages as m
from dbsentry.identity.model import Identity
from dbsentry.policy import parse_policy

CONFIG = parse_config(
    {"connections": {"app": {"database": "app_db", "user": "svc", "environment": "staging"}}},
    Path("."),
)
POLICY = """
rules:
  - name: vault-for-dba
    match: {tables: [vault]}
    unless: {groups: [dba]}
    action: deny
    message: the vault is for the DBA team
"""
CAROL = Identity("carol@example.com", frozenset({"eng"}), "human", "tok-c", "token")


class Grants:
    """A stand-in for the approvals service: carol has group dba while ``active``."""

    def __init__(self) -> None:
        self.active = True

    def effective_identity(self, identity: Identity) -> Identity:
        return replace(identity, groups=identity.groups | {"dba"}) if self.active else identity

    def connection_granted(self, identity: str, connection: str) -> bool:
        return False


def ready_session(grants: Grants) -> Session:
    session = Session(
        CONFIG,
        ClientInfo("203.0.113.9:5000", tls=True),
        7,
        b"key!",
        governor=Governor(parse_policy(POLICY)),
        approvals=grants,
    )
    session.handle(ClientData(codec.encode_startup((("user", CAROL.name), ("database", "app")))))
    session.handle(ClientData(codec.encode_password("tok")))
    session.handle(PasswordVerified(CAROL))
    session.handle(UpstreamReady(b"", {}, 1, b"up!!", "I"))
    return session


def sent_upstream(commands: list[c.Command]) -> bytes:
    return b"".join(cmd.data for cmd in commands if isinstance(cmd, c.SendUpstream))


def test_prepared_statement_is_judged_again_when_a_grant_expires() -> None:
    grants = Grants()
    session = ready_session(grants)
    parse = codec.encode_parse(m.Parse("s1", "select * from vault"))
    out = sent_upstream(session.handle(ClientData(parse + codec.SYNC)))
    assert out == parse + codec.SYNC  # granted: forwarded as sent
    session.handle(UpstreamData(codec.frame(b"1") + codec.encode_ready("I")))

    bind = codec.encode_bind(m.Bind("", "s1")) + codec.encode_execute(m.Execute("")) + codec.SYNC
    assert sent_upstream(session.handle(ClientData(bind))) == bind  # still granted
    session.handle(
        UpstreamData(codec.frame(b"2") + codec.encode_command_complete("SELECT 0") + codec.encode_ready("I"))
    )

    grants.active = False  # the grant expired
    out = sent_upstream(session.handle(ClientData(bind)))
    assert b"dbsentry refused statement " in out  # the Bind now names a statement that cannot exist
    assert out != bind


def test_simple_query_follows_the_grant() -> None:
    grants = Grants()
    session = ready_session(grants)
    query = codec.encode_query("select * from vault")
    assert sent_upstream(session.handle(ClientData(query))) == query
    session.handle(UpstreamData(codec.encode_command_complete("SELECT 0") + codec.encode_ready("I")))
    grants.active = False
    assert b"dbsentry refused statement " in sent_upstream(session.handle(ClientData(query)))
