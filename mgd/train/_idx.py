"""Reading IDX files (the format of MNIST and Fashion-MNIST), gzip-compressed or plain."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

__all__ = ["read_idx"]

# The third byte of the magic number names the element type; only unsigned bytes (0x08) are
# used by MNIST-style data sets.
_UBYTE = 0x08


def read_idx(path: str | Path, *, ndim: int) -> np.ndarray:
    """The ``uint8`` array stored in an IDX file of ``ndim`` dimensions.

    The file may be gzip-compressed (recognized by its content, not its name). The header is
    the magic number ``0x0000 0x08 ndim`` then ``ndim`` big-endian int32 sizes; the data follow
    in row-major order.

    Args:
      path: the file.
      ndim: the number of dimensions expected (1 for labels, 3 for images).

    Returns:
      A ``uint8`` array of the stored shape.

    Raises:
      ValueError: an unreadable or corrupt gzip stream, a wrong magic number, or a file shorter
        or longer than its header says; the message names the file.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ValueError(f"IDX file {str(path)!r} cannot be read: {e}") from e
    magic = bytes([0, 0, _UBYTE, ndim])
    if raw[:4] != magic:
        raise ValueError(
            f"IDX file {str(path)!r} has magic number 0x{raw[:4].hex() or 'none'}, expected "
            f"0x{magic.hex()} (unsigned bytes, {ndim} dimension(s)); is it the right file?"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(
            f"IDX file {str(path)!r} is truncated: {len(raw)} bytes, shorter than its "
            f"{header}-byte header"
        )
    shape = tuple(int(s) for s in np.frombuffer(raw, ">i4", ndim, offset=4))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise ValueError(
            f"IDX file {str(path)!r} is {what}: {len(raw)} bytes, but its header (shape "
            f"{shape}) needs {expected}"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)
