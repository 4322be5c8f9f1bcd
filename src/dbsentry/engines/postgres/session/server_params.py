"""What a connection's server tells a client at login, remembered from real logins.

A session that logs its client in before any upstream connection exists (a *lazy*
upstream, see ``limits.lazy_upstream``) must greet it with the ParameterStatus values the
server would have sent.  They are learned from the real logins of the same connection:

* the values the server reports when the client sets nothing (``server_version``,
  ``server_encoding``, ``is_superuser`` of the proxy's upstream role, the ``TimeZone`` and
  ``DateStyle`` defaults, ...), refreshed by every real login;
* for each setting a client gave at startup (``client_encoding=latin1``,
  ``DateStyle=german``, ``-c search_path=app``), that the server accepted it and what it
  then reported, exactly as it spelled it (``LATIN1``, ``German, DMY``).

A client whose settings were all seen before (or only set ``application_name`` to
printable ASCII, which the server reports as given) can be greeted at once.  Anything
else (a setting never seen, a default not known yet, an ``options`` switch other than
``-c``) means the session logs in upstream first, as without the cache, and that login
teaches the cache.  Should the server report something else when the upstream is opened
after all (an upgrade, a failover), the session forwards the differences then.

Single flight: while such a login is under way, the clients that would be greeted once it
completes (same connection, same settings but for a printable ``application_name``) wait
for it rather than each logging in upstream too (:meth:`ServerParams.join_login`), so a
burst of clients right after the proxy starts opens one backend, not one each.

Pure bookkeeping: no I/O, shared by the sessions of one proxy process.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

# How many distinct startup settings are remembered per connection (oldest dropped first).
MAX_SETTINGS = 256
# Greetings kept per connection, so that sessions with the same settings share one.
MAX_GREETINGS = 64

Setting = tuple[str, str]  # (lower-case name, value), as the client gave it


def reported_as_given(name: str, value: str) -> bool:
    """Whether the server reports this startup setting exactly as given, without asking it.

    ``application_name`` is taken as is when it is printable ASCII (other bytes are escaped,
    differently by server version).
    """
    return name == "application_name" and all(" " <= ch <= "~" for ch in value)


@dataclass(frozen=True, slots=True)
class Greeting:
    """The ParameterStatus values (in the server's order) and transaction status a client
    is greeted with; shared by the sessions whose settings differ at most in a printable
    ``application_name`` (see :meth:`told`)."""

    params: tuple[tuple[str, str], ...]
    status: str

    def told(self, application_name: str | None) -> Iterator[tuple[str, str]]:
        """The pairs a client gets, with its own ``application_name`` when it set one."""
        for name, value in self.params:
            if application_name is not None and name == "application_name":
                yield name, application_name
            else:
                yield name, value


def given_application_name(settings: Iterable[Setting]) -> str | None:
    """The ``application_name`` the server will report as given, if the client set one."""
    final = dict(settings).get("application_name")
    return final if final is not None and reported_as_given("application_name", final) else None


@dataclass(slots=True)
class _Known:
    order: tuple[str, ...] = ()  # reported names, in the order the server sent them
    names: dict[str, str] = field(default_factory=dict)  # lower-case name -> reported name
    defaults: dict[str, str] = field(default_factory=dict)  # reported name -> value when not set
    # A setting a login used successfully -> what the server then reported for it (None:
    # the parameter is not reported).
    settings: dict[Setting, str | None] = field(default_factory=dict)
    status: str = "I"
    # (final settings but a printable application_name, whether one was set) -> greeting
    greetings: dict[tuple[tuple[Setting, ...], bool], Greeting] = field(default_factory=dict)


# What a login is learned for: the connection, the final settings but a printable
# application_name, and whether one was set (the greetings it makes known).
LoginKey = tuple[str, tuple[Setting, ...], bool]


def _greeting_key(settings: Iterable[Setting]) -> tuple[tuple[Setting, ...], bool]:
    final = dict(settings)  # the server applies them in order: the last one counts
    app = final.get("application_name")
    own_app = app is not None and reported_as_given("application_name", app)
    if own_app:
        del final["application_name"]
    return tuple(final.items()), own_app


class ServerParams:
    """Per connection name: the server's ParameterStatus values and startup settings seen,
    and the logins under way that will teach more."""

    __slots__ = ("_known", "_logins")

    def __init__(self) -> None:
        self._known: dict[str, _Known] = {}
        # Logins in flight -> the sessions (proxy backend pids) waiting for them, in order.
        self._logins: dict[LoginKey, dict[int, None]] = {}

    def known(self, connection: str) -> bool:
        return connection in self._known

    def learn(self, connection: str, settings: Iterable[Setting], params: Mapping[str, str], status: str) -> None:
        """A real login of ``connection`` with startup ``settings`` reported ``params``."""
        known = self._known.get(connection)
        if known is None:
            known = self._known[connection] = _Known()
        final = dict(settings)  # the server applies them in order: the last one counts
        order = tuple(params)
        defaults = {name: value for name, value in known.defaults.items() if name in params}
        for name, value in params.items():
            if name.lower() not in final:
                defaults[name] = value
        changed = order != known.order or defaults != known.defaults or status != known.status
        if order != known.order:
            known.order = order
            known.names = {name.lower(): name for name in params}
        known.defaults = defaults
        known.status = status
        learned = known.settings
        for name, value in final.items():
            if reported_as_given(name, value):
                continue  # nothing to learn, and one per client would crowd out the rest
            shown = known.names.get(name)
            reported = None if shown is None else params[shown]
            key = (name, value)
            if key in learned and learned[key] == reported:
                continue
            changed = changed or key in learned
            learned.pop(key, None)
            learned[key] = reported
            if len(learned) > MAX_SETTINGS:
                del learned[next(iter(learned))]
                changed = True
        if changed:
            known.greetings.clear()

    def greeting(self, connection: str, settings: Iterable[Setting]) -> Greeting | None:
        """How a client with these startup settings is greeted by ``connection``'s server,
        or None when that is not known (then log in upstream first)."""
        known = self._known.get(connection)
        if known is None:
            return None
        key = _greeting_key(settings)
        greeting = known.greetings.get(key)
        if greeting is None:
            greeting = self._greeting(known, *key)
            if greeting is None:
                return None
            if len(known.greetings) >= MAX_GREETINGS:
                del known.greetings[next(iter(known.greetings))]
            known.greetings[key] = greeting
        return greeting

    @staticmethod
    def _greeting(known: _Known, settings: Sequence[Setting], own_app: bool) -> Greeting | None:
        told: dict[str, str] = {}
        for name, value in settings:
            if (name, value) not in known.settings:
                return None
            reported = known.settings[(name, value)]
            if reported is not None:
                shown = known.names.get(name)
                if shown is None:
                    return None  # reported once, not by the server's latest login
                told[shown] = reported
        out = []
        for shown in known.order:
            got = told.get(shown)
            if got is None:
                got = known.defaults.get(shown)
            if got is None:
                if not (own_app and shown.lower() == "application_name"):
                    return None  # every login so far set it: its default is unknown
                got = ""  # the session's own name replaces it
            out.append((shown, got))
        return Greeting(tuple(out), known.status)

    # ------------------------------------------------------------------ logins in flight

    @staticmethod
    def login_key(connection: str, settings: Iterable[Setting]) -> LoginKey:
        """What a login with these settings teaches: the greeting of every client of
        ``connection`` with the same key (see :meth:`join_login`)."""
        final, own_app = _greeting_key(settings)
        return connection, final, own_app

    def join_login(self, key: LoginKey, waiter: int) -> LoginKey | None:
        """A client of ``key`` has no greeting yet.  When another session's login that will
        teach it is in flight, ``waiter`` is to be woken when it ends (:meth:`login_ended`):
        that login's key.  Otherwise None: the caller's own login is the one for ``key``
        from now on, until it ends."""
        waiting = self._logins.get(key)
        if waiting is None and key[2]:
            # A login that sets no application_name teaches its default too, so the
            # greeting of the clients that set one.
            joined = (key[0], key[1], False)
            waiting = self._logins.get(joined)
        else:
            joined = key
        if waiting is None:
            self._logins[key] = {}
            return None
        waiting[waiter] = None
        return joined

    def leave_login(self, key: LoginKey, waiter: int) -> None:
        """``waiter`` no longer waits (it left, or gave up waiting)."""
        waiting = self._logins.get(key)
        if waiting is not None:
            waiting.pop(waiter, None)

    def login_ended(self, key: LoginKey) -> tuple[int, ...]:
        """The login in flight for ``key`` ended, whether it taught the greeting or failed:
        the sessions that waited for it, in the order they came."""
        return tuple(self._logins.pop(key, ()))

    def logins_in_flight(self) -> int:
        return len(self._logins)
