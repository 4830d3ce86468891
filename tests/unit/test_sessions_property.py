"""Random hellos, joins, leavings and expiries on the pure session table.

Whatever the order, the table stays bounded, every tag names exactly the
session the table holds under it, a repeated hello gets the same session,
and the key the controller derives is the one the worker derives from the
welcome.
"""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from zmqworkers._version import __version__
from zmqworkers.controller.sessions import Link, Session, SessionTable
from zmqworkers.protocol.records import Hello, Refused
from zmqworkers.protocol.session import sender_name, session_key, session_tag

KEY = b"k" * 32
LINK = Link(
    key=KEY,
    host="here",
    protected=False,
    sign_buffers=False,
    local_address="ipc:///tmp/x/tasks",
    hello_ttl=5.0,
    private_ipc=True,
)

ops = st.lists(
    st.tuples(
        st.sampled_from(["hello", "hello", "join", "end", "expire", "tick"]),
        st.integers(0, 5),  # worker (0 to 2: the controller's own, on its ipc folder)
        st.integers(0, 2),  # nonce
        st.integers(0, 1),  # route
    ),
    max_size=120,
)
LOCAL_PIDS = {0, 1, 2}


def _nonce(i: int) -> bytes:
    return bytes([i]) * 16


def _check(table: SessionTable) -> None:
    assert len(table.pending) <= table.max_pending
    assert len(table.retired) <= table.max_retired
    held = [*table.pending.values(), *table.live.values(), *table.retired.values()]
    assert {s.tag for s in held} == set(table.by_tag)
    for s in held:
        assert table.get(s.tag) is s
    for wid, s in table.live.items():
        assert s.joined and not s.retired and s.state.id == wid
    for wid, s in table.pending.items():
        assert table.live.get(wid) is not s and not s.joined


def _join(table: SessionTable, s: Session, now: float) -> None:
    table.leave_pending(s)
    if s.state.id in table.live:
        table.end(s.state.id)  # said hello again: the old session is over
    table.go_live(s, now)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_table_stays_consistent(steps: list[tuple[str, int, int, int]]) -> None:
    table = SessionTable(LINK, max_pending=3, max_retired=2)
    now = 0.0
    counter = 0
    for op, w, n, r in steps:
        wid = f"w{w}"
        if op == "hello":
            counter += 1
            ours = counter.to_bytes(16, "big")
            hello = Hello(
                id=wid,
                nonce=_nonce(n),
                version=__version__,
                pid=w,
                host="here",
                dialled=LINK.local_address if w in LOCAL_PIDS else "",
            )
            # The session this same hello already has, if any: pending, or
            # live having joined at its welcome.
            live = table.live.get(wid)
            same = [
                s
                for s in (table.pending.get(wid), live if live and live.joins_at_welcome else None)
                if s is not None and s.worker_nonce == hello.nonce and s.route == bytes([r])
            ]
            ended = any(r.worker_nonce == hello.nonce for r in table.retired.values())
            answer = table.hello(bytes([r]), hello, now, ours, local_pids=LOCAL_PIDS)
            assert isinstance(answer, Session)
            if same:
                assert answer is same[0]  # the same hello, the same session
            else:
                assert answer.tag == ours.hex()
                # What the worker derives from the welcome signs the same.
                mine = session_key(KEY, hello.nonce, ours, sign_buffers=True)
                assert mine.secret == answer.key.secret
                # Only the controller's own workers join at their welcome,
                # and never with the nonce of a session already over.
                assert answer.joins_at_welcome == (w in LOCAL_PIDS and not ended)
            assert session_tag(sender_name(wid, answer.tag, "r")) == answer.tag
            if answer.joins_at_welcome and not answer.joined:
                _join(table, answer, now)  # as the engine does
        elif op == "join" and wid in table.pending:
            _join(table, table.pending[wid], now)
        elif op == "end":
            forgotten = table.end(wid)
            assert all(session_tag(name) not in table.by_tag for name in forgotten)
        elif op == "expire":
            table.expire(now)
            assert all(s.expires >= now for s in table.pending.values())
        else:
            now += 2.0
        _check(table)


@given(st.sampled_from(["0.0.1", "99.0.0", "garbage", "?"]), st.booleans())
def test_other_releases_are_refused_for_good(version: str, closing: bool) -> None:
    table = SessionTable(LINK)
    answer = table.hello(b"r", Hello(id="w", nonce=_nonce(1), version=version), 0.0, _nonce(2))
    assert isinstance(answer, Refused) and answer.fatal and answer.code == "version"
    assert answer.nonce == _nonce(1)
    assert not table.by_tag


def test_closing_refuses_for_now_and_ipc_marks_local_workers() -> None:
    table = SessionTable(LINK)
    hello = Hello(
        id="w", nonce=_nonce(1), host="here", version=__version__, dialled=LINK.local_address
    )
    refused = table.hello(b"r", hello, 0.0, _nonce(2), closing=True)
    assert isinstance(refused, Refused) and not refused.fatal and refused.code == "closing"
    s = table.hello(b"r", hello, 0.0, _nonce(2), local_pids={0})
    assert isinstance(s, Session) and s.via_ipc and s.state.local
    assert s.state.buffers_signed  # the worker did not vouch for its link


@given(
    ours=st.integers(64 * 1024, 1 << 40),
    theirs=st.one_of(st.integers(-5, 1 << 40), st.none(), st.booleans(), st.text(max_size=3)),
)
def test_a_session_sends_nothing_over_either_sides_limit(ours: int, theirs: object) -> None:
    table = SessionTable(dataclasses.replace(LINK, max_message_size=ours))
    header = Hello(id="w1", nonce=b"n" * 16, version=__version__).header()
    header["max_message_size"] = theirs
    s = table.hello(b"r", Hello.parse(header), 0.0, b"c" * 16)
    assert isinstance(s, Session)
    assert s.limit <= ours
    if isinstance(theirs, int) and not isinstance(theirs, bool) and theirs >= 64 * 1024:
        assert s.limit == min(ours, theirs)
    else:
        assert s.limit == ours  # a peer that said nothing usable leaves ours


def test_own_local_workers_on_the_ipc_folder_join_at_their_welcome() -> None:
    table = SessionTable(LINK)

    def hello(wid: str, pid: int, dialled: str, route: bytes = b"r", nonce: int = 1) -> Session:
        h = Hello(
            id=wid, nonce=_nonce(nonce), host="here", pid=pid, version=__version__, dialled=dialled
        )
        s = table.hello(route, h, 0.0, _nonce(len(table.by_tag) + 2), local_pids={7})
        assert isinstance(s, Session)
        return s

    ours = hello("w", 7, LINK.local_address)
    assert ours.joins_at_welcome
    # Elsewhere, or not one of the controller's processes: the first signed
    # message decides, as for any worker.
    assert not hello("x", 8, LINK.local_address).joins_at_welcome
    assert not hello("y", 7, "tcp://127.0.0.1:5555").joins_at_welcome
    # Joined at its welcome, the same hello said again gets the same session;
    # on another connection, or with another nonce, it is a new one.
    table.leave_pending(ours)
    table.go_live(ours, 0.0)
    assert hello("w", 7, LINK.local_address) is ours
    assert hello("w", 7, LINK.local_address, route=b"q") is not ours
    assert hello("w", 7, LINK.local_address, nonce=9) is not ours
    # Once that session is over, a hello with its nonce waits for a signature.
    table.end("w")
    again = hello("w", 7, LINK.local_address)
    assert again is not ours and not again.joins_at_welcome
    # An ipc address given as bind is no private folder of the controller's.
    table = SessionTable(dataclasses.replace(LINK, private_ipc=False))
    assert not hello("z", 7, LINK.local_address).joins_at_welcome
