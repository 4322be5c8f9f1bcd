"""``dbsentry token create|list|revoke`` and config validation, as a user runs them."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import psycopg
import pytest
import yaml

from support.pg import PgServer
from support.proxy import RunningProxy, dbsentry_cli, write_config

pytestmark = pytest.mark.e2e

TOKEN_RE = re.compile(r"dbs_([0-9a-f]{12})_[A-Za-z0-9_-]{43}")


def create(proxy: RunningProxy, identity: str, *args: str) -> tuple[str, str]:
    done = dbsentry_cli("token", "create", "--identity", identity, *args, config=proxy.config_path)
    return done.stdout, done.stderr


def test_create_prints_only_the_token(proxy: RunningProxy) -> None:
    stdout, stderr = create(
        proxy, "carol@example.com", "--group", "eng", "--group", "oncall", "--ttl", "30m"
    )
    assert stdout.endswith("\n") and stdout.count("\n") == 1
    token = stdout.strip()
    match = TOKEN_RE.fullmatch(token)
    assert match is not None, stdout
    assert token.startswith("dbs_")
    # The token itself never goes to stderr, only its public id.
    assert stderr.strip() == f"created token {match.group(1)} for carol@example.com"
    with psycopg.connect(proxy.dsn("carol@example.com", token=token)) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_list_shows_token_and_json(proxy: RunningProxy) -> None:
    stdout, _ = create(
        proxy, "list-me@example.com", "--group", "b", "--group", "a", "--agent", "--ttl", "2h"
    )
    token_id = TOKEN_RE.fullmatch(stdout.strip()).group(1)  # type: ignore[union-attr]

    listing = dbsentry_cli("token", "list", config=proxy.config_path).stdout
    lines = listing.splitlines()
    assert lines[0].split() == ["ID", "IDENTITY", "KIND", "GROUPS", "EXPIRES", "STATUS"]
    mine = [line for line in lines if line.startswith(token_id)]
    assert len(mine) == 1
    assert mine[0].split()[:4] == [token_id, "list-me@example.com", "agent", "a,b"]
    assert mine[0].split()[-1] == "active"
    assert "dbs_" not in listing  # never the secret

    objects = [
        json.loads(line)
        for line in dbsentry_cli(
            "token", "list", "--json", config=proxy.config_path
        ).stdout.splitlines()
    ]
    entry = next(o for o in objects if o["id"] == token_id)
    assert entry["identity"] == "list-me@example.com"
    assert entry["groups"] == ["a", "b"]
    assert entry["kind"] == "agent"
    assert entry["active"] is True
    assert entry["revoked_at"] == "-"
    expires = time.mktime(time.strptime(entry["expires_at"], "%Y-%m-%dT%H:%M:%SZ")) - time.mktime(
        time.strptime(entry["created_at"], "%Y-%m-%dT%H:%M:%SZ")
    )
    assert abs(expires - 7200) <= 1


def test_revoke_makes_login_fail(fresh_proxy: RunningProxy) -> None:
    stdout, _ = create(fresh_proxy, "rev@example.com")
    token = stdout.strip()
    token_id = TOKEN_RE.fullmatch(token).group(1)  # type: ignore[union-attr]
    with psycopg.connect(
        fresh_proxy.dsn("rev@example.com", token=token), autocommit=True
    ) as open_before:
        done = dbsentry_cli("token", "revoke", token_id, config=fresh_proxy.config_path)
        assert done.stderr.strip() == f"revoked {token_id}"
        with pytest.raises(
            psycopg.OperationalError,
            match=re.escape('password authentication failed for user "rev@example.com"'),
        ):
            psycopg.connect(fresh_proxy.dsn("rev@example.com", token=token))
        # Revocation stops new logins; it does not cut a session already open.
        assert open_before.execute("select 1").fetchone() == (1,)

    listing = dbsentry_cli("token", "list", config=fresh_proxy.config_path).stdout
    assert token_id not in listing
    all_listing = dbsentry_cli("token", "list", "--all", config=fresh_proxy.config_path).stdout
    assert [line.split()[-1] for line in all_listing.splitlines() if line.startswith(token_id)] == [
        "revoked"
    ]

    again = dbsentry_cli("token", "revoke", token_id, config=fresh_proxy.config_path, check=False)
    assert again.returncode == 1
    assert again.stderr.strip() == f"dbsentry: no active token {token_id}"


def test_expired_token_listed_as_expired(proxy: RunningProxy) -> None:
    stdout, _ = create(proxy, "short@example.com", "--ttl", "1s")
    token_id = TOKEN_RE.fullmatch(stdout.strip()).group(1)  # type: ignore[union-attr]
    time.sleep(1.1)
    listing = dbsentry_cli("token", "list", config=proxy.config_path).stdout
    assert [line.split()[-1] for line in listing.splitlines() if line.startswith(token_id)] == [
        "expired"
    ]


@pytest.mark.parametrize("ttl", ["10", "0s", "soon", "-1h"])
def test_create_with_bad_ttl(proxy: RunningProxy, ttl: str) -> None:
    done = dbsentry_cli(
        "token",
        "create",
        "--identity",
        "x@example.com",
        "--ttl",
        ttl,
        config=proxy.config_path,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert "--ttl" in done.stderr and "invalid duration" in done.stderr


def _config_with(tmp_path: Path, pg_server: PgServer, mutate: dict[str, object]) -> Path:
    path = write_config(tmp_path, pg_server)
    data = yaml.safe_load(path.read_text())
    for dotted, value in mutate.items():
        *parents, leaf = dotted.split(".")
        node = data
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        ({"connections.prod.port": "not-a-port"}, "connections.prod.port"),
        ({"connections.prod.port": 70000}, "connections.prod.port"),
        ({"connections.prod.upstream_tls": "maybe"}, "connections.prod.upstream_tls"),
        ({"listen.postgres": "nowhere"}, "listen.postgres"),
        ({"limits.max_message_bytes": 10}, "limits.max_message_bytes"),
        ({"limits.bogus": 1}, "limits.bogus"),
        (
            {"connections.prod.password_env": "X", "connections.prod.password": "y"},
            "connections.prod",
        ),
        # fail closed: an environment nobody declared would silently get no production rules
        ({"connections.prod.environment": "prod"}, "connections.prod.environment"),
        ({"connections.staging.environment": "PRODUCTION"}, "connections.staging.environment"),
        ({"guardrails.max_fraction_changed": 2}, "guardrails.max_fraction_changed"),
        ({"guardrails.agent_statement_timeout": "soon"}, "guardrails.agent_statement_timeout"),
    ],
)
def test_invalid_config_names_the_key(
    tmp_path: Path, pg_server: PgServer, mutate: dict[str, object], key: str
) -> None:
    config = _config_with(tmp_path, pg_server, mutate)
    done = dbsentry_cli("check-config", config=config, check=False)
    assert done.returncode == 2, done
    assert done.stdout == ""
    assert done.stderr.startswith("dbsentry: invalid configuration ")
    assert re.search(rf"^{re.escape(key)}: ", done.stderr, re.MULTILINE), done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "command",
    [
        ("token", "create", "--identity", "x@example.com"),
        ("token", "list"),
        ("token", "revoke", "0123456789ab"),
    ],
)
def test_token_commands_refuse_invalid_config(
    tmp_path: Path, pg_server: PgServer, command: tuple[str, ...]
) -> None:
    config = _config_with(tmp_path, pg_server, {"connections.prod.port": "not-a-port"})
    done = dbsentry_cli(*command, config=config, check=False)
    assert done.returncode == 2, done
    assert done.stdout == ""
    assert done.stderr.startswith("dbsentry: invalid configuration ")
    assert re.search(r"^connections\.prod\.port: ", done.stderr, re.MULTILINE), done.stderr
    assert "Traceback" not in done.stderr
    # Nothing was created from a config that does not validate.
    assert not (tmp_path / "state" / "tokens.db").exists()


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        ({"connections.prod.port": "not-a-port"}, "connections.prod.port"),
        ({"connections.prod.environment": "prod"}, "connections.prod.environment"),
    ],
)
def test_serve_with_invalid_config_exits_2(tmp_path: Path, pg_server: PgServer, mutate: dict[str, object], key: str) -> None:
    config = _config_with(tmp_path, pg_server, mutate)
    done = dbsentry_cli("serve", config=config, check=False)
    assert done.returncode == 2
    assert f"{key}: " in done.stderr


def test_environment_declared_by_the_policy_is_accepted(tmp_path: Path, pg_server: PgServer) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("production_environments: [production, prod-eu]\n")
    config = _config_with(tmp_path, pg_server, {"connections.prod.environment": "prod-eu", "policy": str(policy)})
    done = dbsentry_cli("check-config", "--offline", config=config, check=False)
    assert done.returncode == 0, done.stderr
    assert "production: prod" in done.stdout


def test_connection_without_environment_is_production(tmp_path: Path, pg_server: PgServer) -> None:
    path = write_config(tmp_path, pg_server)
    data = yaml.safe_load(path.read_text())
    del data["connections"]["staging"]["environment"]
    path.write_text(yaml.safe_dump(data))
    done = dbsentry_cli("check-config", "--offline", config=path)
    assert "production: prod, staging" in done.stdout


def test_missing_config_file(tmp_path: Path) -> None:
    done = dbsentry_cli("token", "list", config=tmp_path / "absent.yaml", check=False)
    assert done.returncode == 2
    assert "cannot read" in done.stderr and "absent.yaml" in done.stderr


def test_check_config_ok(proxy: RunningProxy) -> None:
    done = dbsentry_cli("check-config", "--offline", config=proxy.config_path)
    assert done.stdout.strip() == f"{proxy.config_path}: ok (3 connections; production: prod)"
    assert done.stderr == ""


def test_check_config_warns_about_a_superuser_upstream(proxy: RunningProxy, pg_server: PgServer) -> None:
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        powerful = conn.execute("select rolsuper or rolbypassrls from pg_roles where rolname = current_user").fetchone()
    done = dbsentry_cli("check-config", config=proxy.config_path, check=False)
    strict = dbsentry_cli("check-config", "--strict", config=proxy.config_path, check=False)
    if powerful and powerful[0]:
        assert done.returncode == 0 and "; 1 warning" in done.stdout
        assert re.search(r"^WARNING: production connection 'prod' logs in upstream as \S+, which is (a superuser|BYPASSRLS)", done.stderr, re.M), done.stderr
        assert "least-privilege role" in done.stderr
        assert strict.returncode == 1
    else:
        assert done.returncode == 0 and "WARNING" not in done.stderr and strict.returncode == 0
