"""``Exchange.received_all`` (a chunk of server messages at once, the session's every
read) follows the requests exactly as ``received`` does, message by message."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbsentry.engines.postgres.session.exchange import Exchange
from dbsentry.engines.postgres.wire import messages as m

REQUESTS = [m.Q_QUERY, m.Q_FUNCTION_CALL, m.Q_PARSE, m.Q_BIND, m.Q_CLOSE, m.Q_DESCRIBE, m.Q_EXECUTE, m.Q_SYNC, m.Q_FLUSH]
ANSWERS = [
    ord("1"), ord("2"), ord("3"), m.R_ROW_DESCRIPTION, m.R_NO_DATA, ord("t"), m.R_DATA_ROW, m.COPY_DATA,
    m.R_COMMAND_COMPLETE, m.R_EMPTY_QUERY, m.R_PORTAL_SUSPENDED, m.R_ERROR, m.R_NOTICE, m.R_READY,
    m.R_PARAMETER_STATUS,
]  # fmt: skip

steps = st.lists(
    st.one_of(
        st.tuples(st.just("sent"), st.sampled_from(REQUESTS), st.sampled_from([0, 0, 0, 1, 2])),
        st.tuples(st.just("received"), st.lists(st.sampled_from(ANSWERS), max_size=8), st.just(0)),
    ),
    max_size=30,
)


def state(x: Exchange) -> object:
    return list(x._items), dict(x._open), list(x.parse_outcomes), x.skipping


@settings(max_examples=800, deadline=None, suppress_health_check=list(HealthCheck))
@given(steps)
def test_received_all_is_received_for_each_message(script: list[tuple[str, object, int]]) -> None:
    one_by_one, at_once = Exchange(), Exchange()
    for what, arg, owner in script:
        if what == "sent":
            assert isinstance(arg, int)
            one_by_one.sent(arg, owner)
            at_once.sent(arg, owner)
        else:
            assert isinstance(arg, list)
            for t in arg:
                if t != m.R_DATA_ROW and t != m.COPY_DATA:
                    one_by_one.received(t)
            at_once.received_all([(t, 0, 0) for t in arg])
        assert state(at_once) == state(one_by_one)
