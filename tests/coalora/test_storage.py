"""Locations on a local disk and in an S3-compatible object store (moto's server on loopback)."""

from __future__ import annotations

import pytest

from coalora.errors import StorageError
from coalora.storage import Location, is_uri, local_copy, open_location


@pytest.fixture(scope="module")
def s3_uri(s3_server):
    return s3_server("coalora-b")


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> Location:
    if request.param == "local":
        return open_location(tmp_path / "runs")
    return open_location(request.getfixturevalue("s3_uri"))


def test_write_read_list_remove(root):
    run = root / "r1"
    assert not run.exists() and list(run.iterdir()) == []
    (run / "a.txt").write_text("alpha")
    (run / "sub" / "b.bin").write_bytes(b"\x00\x01")
    (run / "sub" / "c.bin").write_bytes(b"")
    assert run.is_dir() and (run / "a.txt").is_file() and not (run / "a.txt").is_dir()
    assert (run / "a.txt").read_text() == "alpha"
    assert [p.name for p in run.iterdir()] == ["a.txt", "sub"]
    assert (run / "sub").read_files() == {"b.bin": b"\x00\x01", "c.bin": b""}
    (run / "a.txt").write_text("beta")  # replaced whole
    assert (run / "a.txt").read_text() == "beta"
    (run / "sub").remove()
    assert not (run / "sub").exists() and (run / "a.txt").exists()
    run.rmtree()
    assert not run.exists()
    run.rmtree()  # nothing there: nothing to do
    with pytest.raises(StorageError, match="no such file"):
        (run / "missing").read_bytes()


def test_uri_round_trips_and_copies_locally(root, tmp_path):
    d = root / "ck"
    d.write_files({"meta.json": b"{}", "w.safetensors": b"123"})
    again = open_location(d.uri)
    assert again.uri == d.uri and again.read_files() == d.read_files()
    local = local_copy(d.uri, tmp_path / "cache")
    assert local.name == "ck" and sorted(p.name for p in local.iterdir()) == ["meta.json", "w.safetensors"]
    assert (local / "w.safetensors").read_bytes() == b"123"
    if d.is_local:
        assert local == tmp_path / "runs" / "ck"  # a local checkpoint is used where it is
    else:
        assert "?" in d.uri and d.uri.startswith("s3://coalora-b/runs/ck?endpoint_override=")


def test_local_writes_leave_no_temporary_files(tmp_path):
    loc = open_location(tmp_path / "x" / "t.txt")
    loc.write_text("one")
    loc.write_text("two")
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["t.txt"]


def test_relative_paths_become_absolute_and_bad_uris_are_one_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert open_location("runs").path == str(tmp_path / "runs")
    assert is_uri("s3://b/x") and not is_uri("runs/x")
    with pytest.raises(StorageError, match="cannot use storage 'nope://b/x'"):
        open_location("nope://b/x")


@pytest.mark.parametrize("uri, bare, where", [
    ("s3://b/runs?endpoint_override=http://127.0.0.1:9000&access_key=AKSEEKRIT&secret_key=SEEKRIT",
     "s3://b/runs", "access_key, secret_key"),
    ("s3://b/runs?session_token=SEEKRIT&region=us-east-1", "s3://b/runs", "session_token"),
    ("s3://AKSEEKRIT:SEEKRIT@b/runs", "s3://b/runs", "user part"),
    ("s3://AKSEEKRIT@b/runs/x", "s3://b/runs/x", "user part"),
    ("gs://b/runs?access_token=SEEKRIT&credential_token_expiration=1", "gs://b/runs",
     "access_token, credential_token_expiration"),
])
def test_a_uri_that_carries_credentials_is_refused_without_repeating_them(uri, bare, where):
    with pytest.raises(StorageError) as e:
        open_location(uri)
    msg = str(e.value)
    assert msg.startswith(f"storage URI {bare} carries credentials ({where}): ")
    assert "environment" in msg and "SEEKRIT" not in msg


def test_a_uri_with_only_settings_is_not_taken_for_credentials():
    loc = open_location("s3://b/runs?endpoint_override=http://127.0.0.1:9000&region=us-east-1")
    assert loc.uri == "s3://b/runs?endpoint_override=http://127.0.0.1:9000&region=us-east-1"


def test_cli_refuses_a_checkpoint_uri_with_credentials_in_one_line(tmp_path, capsys):
    from coalora.cli import main

    rc = main(["adapt", "--checkpoint", "s3://AKSEEKRIT:SEEKRIT@b/ckpt", "--budget", "3", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "SEEKRIT" not in err
    assert err.startswith("coalora: error: storage URI s3://b/ckpt carries credentials (user part): ")
    assert not (tmp_path / "o").exists()
