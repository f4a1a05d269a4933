"""The central-directory size check that runs before zipfile parses an untrusted archive."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import pytest

from diag.errors import InputError
from diag.loaders.ziparchive import directory_size, open_zip


def _zip(path: Path, n: int, comment: bytes = b"") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(n):
            zf.writestr(f"e{i}", b"x")
        zf.comment = comment
    return path


@pytest.mark.parametrize("comment", [b"", b"c" * 65535], ids=["plain", "longest-comment"])
def test_declared_size_matches_what_zipfile_reads(tmp_path: Path, comment: bytes) -> None:
    path = _zip(tmp_path / "a.zip", 70, comment)
    entries, cd_bytes = directory_size(path)
    with zipfile.ZipFile(path) as zf:
        assert entries == len(zf.infolist()) == 70
        assert cd_bytes == path.stat().st_size - 22 - len(comment) - zf.start_dir


def test_zip64_record_is_read(tmp_path: Path) -> None:
    """Past 65,535 entries the record says 0xFFFF and the zip64 record holds the count."""
    path = _zip(tmp_path / "z64.zip", 3)
    data = path.read_bytes()
    at = data.rfind(b"PK\x05\x06")
    entries, cd_bytes, cd_offset = struct.unpack_from("<HII", data, at + 10)
    zip64 = struct.pack(
        "<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, cd_bytes, cd_offset
    )
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, at, 1)
    record = bytearray(data[at:])
    struct.pack_into("<HH", record, 8, 0xFFFF, 0xFFFF)
    path.write_bytes(data[:at] + zip64 + locator + bytes(record))
    assert directory_size(path) == (3, cd_bytes)
    with zipfile.ZipFile(path) as zf:
        assert len(zf.infolist()) == 3


def test_over_the_cap_is_refused_before_parsing(tmp_path: Path, monkeypatch) -> None:
    path = _zip(tmp_path / "many.zip", 50)
    parsed = []
    monkeypatch.setattr(zipfile.ZipFile, "_RealGetContents", lambda self: parsed.append(1))
    with pytest.raises(InputError, match=r"declares 50 entries .*cap 10 entries"):
        open_zip(path, 10)
    assert parsed == []
    monkeypatch.undo()
    with open_zip(path, 50) as zf:
        assert len(zf.namelist()) == 50


def test_a_directory_bigger_than_its_count_says_is_refused(tmp_path: Path) -> None:
    """zipfile reads as many bytes of entries as the record declares, whatever the count."""
    path = _zip(tmp_path / "lies.zip", 50)
    data = bytearray(path.read_bytes())
    struct.pack_into("<HH", data, data.rfind(b"PK\x05\x06") + 8, 1, 1)
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="declares 1 entries"):
        open_zip(path, 10)


def test_no_record_is_left_to_zipfile(tmp_path: Path) -> None:
    path = tmp_path / "junk.zip"
    path.write_bytes(b"not a zip at all")
    assert directory_size(path) is None
    with pytest.raises(zipfile.BadZipFile):
        open_zip(path, 10)
