"""The per-row loops of result masking in C (optional; see rows.py and _fastmask.c)."""

from collections.abc import Callable

CACHE_SIZE: int

def mask_data_rows(
    buf: bytes, pos: int, width: int, plan: tuple[tuple[object, ...] | None, ...], /
) -> tuple[bytes | None, int, int]: ...
def mask_copy_rows(
    buf: bytes,
    pos: int,
    delimiter: int,
    null: bytes,
    plan: tuple[tuple[object, ...] | None, ...],
    fallback: Callable[[bytes], bytes],
    /,
) -> tuple[bytes | None, int, int]: ...
