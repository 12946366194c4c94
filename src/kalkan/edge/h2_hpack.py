"""`BlockEncoder`: HPACK for the edge's HTTP/2 answers without the dynamic table, so that a header
block depends only on its fields and is encoded once per distinct field list (a hit's fields are
the same all second long), not once per answer."""

from __future__ import annotations

from typing import Any

from hpack import Encoder
from hpack.hpack import INDEX_NONE
from hpack.table import HeaderTable

from kalkan.memo import Memo

# Field lists → their encoded block; bounded in count, and only small blocks are kept.
_MEMO_COUNT = 256
_BLOCKS: Memo[tuple[tuple[bytes, bytes], ...], bytes] = Memo(_MEMO_COUNT)
_MEMO_BLOCK = 4096


class BlockEncoder(Encoder):
    """Each field is sent from the static table (whole, or its name) or as a literal, never
    added to the dynamic table. The blocks are somewhat larger (a repeated Date or ETag is sent
    again instead of as one byte), but encoding in pure Python costs more than the bytes, and a
    client's HEADER_TABLE_SIZE can never make us keep anything."""

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        key = tuple(headers)
        block = _BLOCKS.table.get(key)
        if block is None:
            block = self._stateless(key, huffman)
            if len(block) <= _MEMO_BLOCK:
                _BLOCKS.put(key, block)
        if self.header_table.resized:
            # The client changed HEADER_TABLE_SIZE: the next block must say we saw it (RFC
            # 7541 §4.2), though we keep nothing in that table.
            self.header_table.resized = False
            return self._encode_table_size_change() + block
        return block

    def _stateless(self, fields: tuple[tuple[bytes, bytes], ...], huffman: bool) -> bytes:
        out = []
        static = HeaderTable.STATIC_TABLE_MAPPING
        for name, value in fields:
            known = static.get(name)
            if known is None:
                out.append(self._encode_literal(name, value, INDEX_NONE, huffman))
                continue
            index = known[1].get(value)
            if index is not None:
                out.append(self._encode_indexed(index))
            else:
                out.append(self._encode_indexed_literal(known[0], value, INDEX_NONE, huffman))
        return b"".join(out)
