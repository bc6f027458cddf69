"""Atomic writes and the cache root (``coalora.io``): exact contents after success, the old contents
and no temporary left behind after a failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from coalora.io import atomic_dir, atomic_write, atomic_write_bytes, atomic_write_text, cache_root


class Boom(Exception):
    pass


def test_atomic_write_bytes_and_text_give_exact_contents(tmp_path: Path) -> None:
    f = tmp_path / "a.bin"
    atomic_write_bytes(f, b"\x00\x01two\xff")
    assert f.read_bytes() == b"\x00\x01two\xff"
    atomic_write_bytes(f, b"shorter")  # a replacement is the new bytes only, not a prefix of the old
    assert f.read_bytes() == b"shorter"
    atomic_write_text(tmp_path / "b.txt", "é\n")
    assert (tmp_path / "b.txt").read_bytes() == "é\n".encode("utf-8")
    atomic_write(tmp_path / "c", lambda fh: (fh.write(b"ab"), fh.write(b"cd")))
    assert (tmp_path / "c").read_bytes() == b"abcd"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt", "c"]


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    f = tmp_path / "table.npy"
    f.write_bytes(b"old")

    def half(fh) -> None:
        fh.write(b"new but incomplete")
        raise Boom("disk full")

    with pytest.raises(Boom, match="disk full"):
        atomic_write(f, half)
    assert f.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.npy"]
    # ... and a file that did not exist stays absent.
    with pytest.raises(Boom):
        atomic_write(tmp_path / "new.json", half)
    assert [p.name for p in tmp_path.iterdir()] == ["table.npy"]


def test_atomic_dir_replaces_a_directory_whole(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "ckpt"
    with atomic_dir(out) as tmp:
        assert tmp.parent == out.parent and tmp.name.startswith(".") and list(tmp.iterdir()) == []
        (tmp / "one").write_text("1")
        assert not out.exists()  # nothing under the final name until the block ends
    assert sorted(p.name for p in out.iterdir()) == ["one"]
    with atomic_dir(out) as tmp:
        (tmp / "two").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["two"]  # the old directory's files are gone
    assert (out / "two").read_text() == "2"
    assert [p.name for p in out.parent.iterdir()] == ["ckpt"]  # no temporary, no ``.old``


def test_a_failing_atomic_dir_leaves_the_old_directory(tmp_path: Path) -> None:
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "meta.json").write_text("old")
    with pytest.raises(Boom):
        with atomic_dir(out) as tmp:
            (tmp / "meta.json").write_text("half")
            raise Boom
    assert (out / "meta.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_atomic_dir_finishes_the_swap_a_crash_interrupted(tmp_path: Path) -> None:
    """A crash after the old copy was moved aside leaves ``<final>.old``; the next write clears it."""
    out = tmp_path / "ckpt"
    (tmp_path / "ckpt.old").mkdir()
    (tmp_path / "ckpt.old" / "stale").write_text("x")
    with atomic_dir(out) as tmp:
        (tmp / "fresh").write_text("y")
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    assert [p.name for p in out.iterdir()] == ["fresh"]


def test_cache_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("COALORA_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    monkeypatch.setenv("COALORA_CACHE", "~/elsewhere")
    assert cache_root() == Path.home() / "elsewhere"
    monkeypatch.delenv("COALORA_CACHE")
    assert cache_root() == Path.home() / ".cache" / "coalora"


def test_the_error_table_cache_lives_under_the_cache_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from coalora.allocation.error_tables import ErrorTableCache

    monkeypatch.setenv("COALORA_CACHE", str(tmp_path))
    assert ErrorTableCache().root == tmp_path / "errors"
    assert ErrorTableCache(tmp_path / "mine").root == tmp_path / "mine"



def test_atomic_writes_get_the_modes_a_plain_write_gets(tmp_path: Path) -> None:
    """Not the 0600/0700 of mkstemp/mkdtemp: an exported adapter or a checkpoint stays readable to
    whoever could read a directory made by ``mkdir``."""
    (tmp_path / "plain.txt").write_text("x")
    (tmp_path / "plain").mkdir()
    atomic_write_text(tmp_path / "atomic.txt", "x")
    with atomic_dir(tmp_path / "atomic") as tmp:
        (tmp / "f").write_text("x")
    assert (tmp_path / "atomic.txt").stat().st_mode == (tmp_path / "plain.txt").stat().st_mode
    assert (tmp_path / "atomic").stat().st_mode == (tmp_path / "plain").stat().st_mode
