"""The table that routes results to map/imap streams stays bounded while a stream runs."""

from __future__ import annotations

from zmqworkers.client.streams import StreamTable


def _results(ids: range) -> list[tuple[int, bool, int]]:
    return [(tid, True, tid) for tid in ids]


def test_delivered_blocks_are_forgotten_while_the_stream_runs() -> None:
    table = StreamTable()
    stream = table.new()
    held = range(1, 11)  # its results come last: the stream stays open
    table.add(held, stream)
    start = 11
    for _ in range(1000):
        ids = range(start, start + 5)
        start += 5
        table.add(ids, stream)
        table.deliver(_results(ids))
    assert table._starts == [held.start]
    assert list(stream.blocks) == [held.start]
    assert stream.outstanding == len(held)
    table.deliver(_results(held))
    assert table._starts == [] and table._by_start == {} and stream.outstanding == 0
    got = []
    while not stream._q.empty():
        got.extend(tid for tid, _, _ in stream.get(None))
    assert sorted(got) == list(range(1, start))


def test_a_block_delivered_in_pieces_and_out_of_order() -> None:
    table = StreamTable()
    a, b = table.new(), table.new()
    table.add(range(1, 5), a)
    table.add(range(5, 9), b)
    table.add(range(9, 13), a)
    table.deliver([(10, True, 0), (2, True, 0), (6, True, 0)])
    assert table._starts == [1, 5, 9]
    table.deliver([(1, True, 0), (3, True, 0), (4, True, 0), (9, True, 0)])
    assert table._starts == [5, 9]  # a's first block is complete
    assert table.remove(a) == [9, 10, 11, 12]  # what a's open blocks hold
    assert table._starts == [5]
    table.deliver([(11, True, 0)])  # abandoned: ignored
    table.deliver(_results(range(5, 9)))
    assert table._starts == [] and b.outstanding == 0 and not b.blocks
    assert table.remove(b) == []
