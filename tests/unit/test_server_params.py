"""The cache of what a connection's server reports at login (lazy upstream connections)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dbsentry.engines.postgres.session.server_params import (
    MAX_SETTINGS,
    ServerParams,
    given_application_name,
    reported_as_given,
)

SERVER = {
    "application_name": "",
    "client_encoding": "UTF8",
    "DateStyle": "ISO, MDY",
    "server_version": "16.2",
    "TimeZone": "UTC",
}


def told(cache: ServerParams, settings: list[tuple[str, str]], connection: str = "app") -> dict[str, str] | None:
    greeting = cache.greeting(connection, settings)
    if greeting is None:
        return None
    return dict(greeting.told(given_application_name(settings)))


def test_nothing_is_known_before_a_real_login() -> None:
    cache = ServerParams()
    assert cache.greeting("app", []) is None
    assert not cache.known("app")


def test_a_login_without_settings_teaches_the_defaults_in_the_servers_order() -> None:
    cache = ServerParams()
    cache.learn("app", [], SERVER, "I")
    greeting = cache.greeting("app", [])
    assert greeting is not None
    assert greeting.params == tuple(SERVER.items())
    assert greeting.status == "I"
    assert cache.greeting("other", []) is None


def test_a_printable_application_name_is_reported_as_given() -> None:
    cache = ServerParams()
    cache.learn("app", [], SERVER, "I")
    assert told(cache, [("application_name", "billing job")]) == {**SERVER, "application_name": "billing job"}
    # Other bytes are escaped by the server, differently by version: it has to say how.
    assert told(cache, [("application_name", "caf\u00e9")]) is None
    assert reported_as_given("application_name", "a-b_c 1.2")
    assert not reported_as_given("application_name", "tab\there")
    assert not reported_as_given("client_encoding", "UTF8")


def test_sessions_differing_only_in_application_name_share_one_greeting() -> None:
    cache = ServerParams()
    cache.learn("app", [], SERVER, "I")
    one = cache.greeting("app", [("application_name", "worker-1")])
    two = cache.greeting("app", [("application_name", "worker-2")])
    assert one is two
    assert one is not None
    assert dict(one.told("worker-2"))["application_name"] == "worker-2"


def test_a_setting_is_known_once_a_login_used_it_with_the_servers_spelling() -> None:
    cache = ServerParams()
    cache.learn("app", [], SERVER, "I")
    assert told(cache, [("client_encoding", "latin1")]) is None
    cache.learn("app", [("client_encoding", "latin1")], {**SERVER, "client_encoding": "LATIN1"}, "I")
    assert told(cache, [("client_encoding", "latin1")]) == {**SERVER, "client_encoding": "LATIN1"}
    # Whoever sets nothing still gets the server's default.
    assert told(cache, []) == SERVER


def test_an_unreported_setting_is_known_valid_but_changes_nothing_reported() -> None:
    cache = ServerParams()
    cache.learn("app", [("search_path", "app")], SERVER, "I")
    assert told(cache, [("search_path", "app")]) == SERVER
    assert told(cache, [("search_path", "other")]) is None


def test_a_default_nobody_ever_left_alone_is_unknown() -> None:
    cache = ServerParams()
    # Every login so far set client_encoding: what the server says without it is unknown.
    cache.learn("app", [("client_encoding", "utf-8")], SERVER, "I")
    assert told(cache, [("client_encoding", "utf-8")]) == SERVER
    assert told(cache, []) is None


def test_application_name_set_by_every_client_needs_no_default() -> None:
    cache = ServerParams()
    cache.learn("app", [("application_name", "psql")], {**SERVER, "application_name": "psql"}, "I")
    assert told(cache, [("application_name", "pgbench")]) == {**SERVER, "application_name": "pgbench"}
    assert told(cache, []) is None


def test_the_last_setting_of_a_name_counts() -> None:
    cache = ServerParams()
    cache.learn("app", [("timezone", "utc"), ("timezone", "europe/paris")], {**SERVER, "TimeZone": "Europe/Paris"}, "I")
    assert told(cache, [("timezone", "europe/paris")]) == {**SERVER, "TimeZone": "Europe/Paris"}
    assert told(cache, [("timezone", "utc"), ("timezone", "europe/paris")]) == {**SERVER, "TimeZone": "Europe/Paris"}


def test_every_login_refreshes_what_is_known() -> None:
    cache = ServerParams()
    cache.learn("app", [], SERVER, "I")
    before = cache.greeting("app", [])
    cache.learn("app", [], SERVER, "I")
    assert cache.greeting("app", []) is before  # nothing changed: still shared
    upgraded = {**SERVER, "server_version": "16.3", "in_hot_standby": "off"}
    cache.learn("app", [], upgraded, "I")
    assert told(cache, []) == upgraded
    # The greeting already handed out is immutable: its sessions can tell what they were told.
    assert before is not None and dict(before.params)["server_version"] == "16.2"


def test_a_parameter_the_server_stops_reporting_is_dropped() -> None:
    cache = ServerParams()
    cache.learn("app", [], SERVER, "I")
    fewer = {k: v for k, v in SERVER.items() if k != "TimeZone"}
    cache.learn("app", [("client_encoding", "latin1")], {**fewer, "client_encoding": "LATIN1"}, "I")
    assert told(cache, []) == fewer


def test_remembered_settings_are_bounded() -> None:
    cache = ServerParams()
    cache.learn("app", [], SERVER, "I")
    for i in range(MAX_SETTINGS + 10):
        cache.learn("app", [("search_path", f"s{i}")], SERVER, "I")
    assert told(cache, [("search_path", "s0")]) is None  # the oldest went first
    assert told(cache, [("search_path", f"s{MAX_SETTINGS + 9}")]) == SERVER


# ---------------------------------------------------------------------------------------
# single flight: the logins under way that will teach a greeting


def test_the_first_client_of_a_key_logs_in_and_the_others_wait_for_it() -> None:
    cache = ServerParams()
    key = cache.login_key("app", [])
    assert cache.join_login(key, 1) is None  # none in flight: this one is
    assert cache.join_login(key, 2) == key
    assert cache.join_login(key, 3) == key
    assert cache.logins_in_flight() == 1
    assert cache.login_ended(key) == (2, 3)  # in the order they came
    assert cache.logins_in_flight() == 0
    assert cache.login_ended(key) == ()
    # The next client without a greeting starts a login of its own again.
    assert cache.join_login(key, 4) is None


def test_a_waiting_client_can_leave() -> None:
    cache = ServerParams()
    key = cache.login_key("app", [])
    cache.join_login(key, 1)
    cache.join_login(key, 2)
    cache.join_login(key, 3)
    cache.leave_login(key, 2)
    cache.leave_login(key, 99)  # not waiting: nothing happens
    assert cache.login_ended(key) == (3,)
    cache.leave_login(key, 3)  # the login is over: nothing happens
    assert cache.logins_in_flight() == 0


def test_logins_are_keyed_like_greetings() -> None:
    key = ServerParams.login_key
    # A printable application_name is the client's own: it shares the login of the others.
    assert key("app", [("application_name", "a")]) == key("app", [("application_name", "b")])
    # ... but not with clients that set none (their greeting needs the default).
    assert key("app", [("application_name", "a")]) != key("app", [])
    # An escaped one is a setting like any other.
    assert key("app", [("application_name", "caf\u00e9")]) != key("app", [("application_name", "a")])
    assert key("app", [("client_encoding", "latin1")]) != key("app", [])
    assert key("app", [("client_encoding", "utf8"), ("client_encoding", "latin1")]) == key(
        "app", [("client_encoding", "latin1")]
    )
    assert key("app", []) != key("other", [])
    cache = ServerParams()
    assert cache.join_login(key("app", []), 1) is None
    assert cache.join_login(key("app", [("client_encoding", "latin1")]), 2) is None  # a login of its own
    assert cache.join_login(key("other", []), 3) is None


def test_a_login_without_application_name_is_waited_for_by_the_clients_that_set_one() -> None:
    cache = ServerParams()
    plain, named = cache.login_key("app", []), cache.login_key("app", [("application_name", "a")])
    assert cache.join_login(plain, 1) is None
    # It teaches the default application_name, so the greeting of a client with its own.
    assert cache.join_login(named, 2) == plain
    assert cache.login_ended(plain) == (2,)
    # The other way round, it would not: a client that sets none needs the default.
    assert cache.join_login(named, 3) is None
    assert cache.join_login(plain, 4) is None
    assert cache.join_login(named, 5) == named
    cache.learn("app", [], SERVER, "I")
    assert cache.greeting("app", [("application_name", "a")]) is not None


_NAMES = st.sampled_from(["application_name", "client_encoding", "datestyle", "search_path"])
_VALUES = st.sampled_from(["a", "b", "latin1", "caf\u00e9"])
_REPORTED_AS = {"application_name": "application_name", "client_encoding": "client_encoding", "datestyle": "DateStyle"}


@given(first=st.lists(st.tuples(_NAMES, _VALUES), max_size=4), app=st.sampled_from(["x", "y"]), known=st.booleans())
def test_a_successful_login_teaches_the_greeting_of_every_client_that_waited_for_it(
    first: list[tuple[str, str]], app: str, known: bool
) -> None:
    # A later client with the same key: the same settings, but maybe its own application_name.
    later = [(n, app if n == "application_name" and reported_as_given(n, v) else v) for n, v in first]
    assert ServerParams.login_key("app", later) == ServerParams.login_key("app", first)
    cache = ServerParams()
    if known:
        cache.learn("app", [], SERVER, "I")
    reported = dict(SERVER)
    for name, value in dict(first).items():
        if name in _REPORTED_AS:
            reported[_REPORTED_AS[name]] = value if name == "application_name" else value.upper()
    cache.learn("app", first, reported, "I")
    assert cache.greeting("app", later) is not None
