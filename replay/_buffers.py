"""numpy and Arrow arrays, one made from the other through their buffers.

pyarrow's own conversions (``pa.array``, ``to_numpy`` with nulls, a Python
scalar in a compute call) import pandas, which costs an export a tenth of its
CPU time and 50 MB. These helpers never do.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

__all__ = ["as_arrow", "as_dictionary", "bits", "flags", "numbers", "strings", "valid", "whole"]


def numbers(array: Any, dtype: Any) -> np.ndarray:
    """The values of a fixed-width Arrow array as a numpy view (anything where null)."""
    return np.frombuffer(array.buffers()[1], dtype, len(array) + array.offset)[array.offset :]


def bits(buffer: Any, offset: int, length: int) -> np.ndarray:
    """``length`` bits of an Arrow bitmap from bit ``offset``, as a numpy bool array."""
    packed = np.frombuffer(buffer, np.uint8)
    return np.unpackbits(packed, bitorder="little", count=offset + length)[offset:].view(bool)


def valid(array: Any) -> np.ndarray:
    """Where an Arrow array is not null, as a numpy bool array."""
    validity = array.buffers()[0]
    if validity is None:
        return np.full(len(array), array.null_count == 0)
    return bits(validity, array.offset, len(array))


def flags(array: Any) -> np.ndarray:
    """An Arrow boolean array as numpy: true where it is true (not null)."""
    return bits(array.buffers()[1], array.offset, len(array)) & valid(array)


def as_arrow(values: np.ndarray, kind: pa.DataType, is_valid: np.ndarray | None = None) -> pa.Array:
    """A numpy array of ``kind``'s width as an Arrow array, null where ``is_valid`` is false."""
    values = np.ascontiguousarray(values)
    validity = None
    if is_valid is not None and not is_valid.all():
        validity = pa.py_buffer(np.packbits(is_valid, bitorder="little"))
    return pa.Array.from_buffers(kind, len(values), [validity, pa.py_buffer(values)])


def strings(texts: list[str]) -> pa.Array:
    """A list of str as an Arrow string array."""
    encoded = [text.encode() for text in texts]
    offsets = np.zeros(len(encoded) + 1, np.int32)
    np.cumsum([len(item) for item in encoded], out=offsets[1:])
    data = pa.py_buffer(b"".join(encoded))
    return pa.Array.from_buffers(pa.string(), len(encoded), [None, pa.py_buffer(offsets), data])


def as_dictionary(indices: np.ndarray, values: pa.Array) -> pa.Array:
    """An int32 numpy array of positions in ``values`` as a dictionary array."""
    return pa.DictionaryArray.from_arrays(as_arrow(indices, pa.int32()), values, safe=False)


def whole(column: pa.ChunkedArray) -> pa.Array:
    """A column as one array: its only chunk as it is (combining would copy it)."""
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
