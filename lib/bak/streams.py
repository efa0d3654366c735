"""Small readers of byte streams shared by the format checkers and the manifest code."""

from __future__ import annotations

from typing import BinaryIO, Iterator


def read_upto(stream: BinaryIO, size: int) -> bytes:
    """`size` bytes, fewer only at the end of the stream (a pipe or SFTP read may return less each time)."""
    chunks, missing = [], size
    while missing:
        chunk = stream.read(missing)
        if not chunk:
            break
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


def lines(stream: BinaryIO, chunk: int = 1 << 20) -> Iterator[bytes]:
    """Lines of a byte stream, read a chunk at a time; the stream is closed at its end."""
    pending = b""
    try:
        while data := stream.read(chunk):
            *complete, pending = (pending + data).split(b"\n")
            yield from complete
        if pending:
            yield pending
    finally:
        stream.close()
