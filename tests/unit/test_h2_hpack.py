"""`BlockEncoder`: what it encodes decodes to the same fields with a standard HPACK decoder,
whatever came before; it keeps nothing in the dynamic table; a table size the client sets is
acknowledged in the next block."""

from __future__ import annotations

import hpack

from kalkan.edge.h2_hpack import BlockEncoder


def fields(i: int) -> list[tuple[bytes, bytes]]:
    return [(b":status", b"200"), (b":status", b"404"), (b"content-type", b"text/html"),
            (b"date", b"Fri, 04 Dec 2026 23:41:%02d GMT" % (i % 60)), (b"x-cache", b"HIT"),
            (b"age", b"%d" % i), (b"set-cookie", b"a=b; HttpOnly"), (b"accept-ranges", b"bytes")]


def test_blocks_decode_to_their_fields_and_nothing_is_kept() -> None:
    encoder, decoder = BlockEncoder(), hpack.Decoder()
    for i in range(300):
        block = encoder.encode(fields(i % 7))
        assert [(bytes(k), bytes(v)) for k, v in decoder.decode(block, raw=True)] == \
            fields(i % 7)
        assert encoder.encode(fields(i % 7)) == block  # memoized, and stateless
    assert len(encoder.header_table.dynamic_entries) == 0
    assert len(decoder.header_table.dynamic_entries) == 0


def test_a_table_size_change_is_acknowledged_once() -> None:
    encoder, decoder = BlockEncoder(), hpack.Decoder()
    plain = encoder.encode(fields(1))
    encoder.header_table_size = 1024
    acknowledged = encoder.encode(fields(1))
    assert acknowledged != plain and acknowledged.endswith(plain)
    assert decoder.decode(acknowledged, raw=True)
    assert decoder.header_table.maxsize == 1024
    assert encoder.encode(fields(1)) == plain
