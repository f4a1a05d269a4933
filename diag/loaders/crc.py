"""CRC-32 (the zip one), as fast as this machine allows.

Checking every tensor's CRC as it streams must not slow the check down: zlib's CRC-32 runs
at about 2 GB/s here, ISA-L's (python-isal, carry-less multiply) at about 11 GB/s.
"""

from __future__ import annotations

try:
    from isal.isal_zlib import crc32
except ImportError:  # no wheel for this platform: same values, slower
    from zlib import crc32

__all__ = ["crc32", "crc_error"]


def crc_error(name: str) -> str:
    """The cause of the InputError for a tensor whose bytes fail their zip CRC-32."""
    return f"corrupt archive: the bytes of tensor {name!r} fail their zip CRC-32 check"
