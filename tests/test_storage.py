import io
import os
import tarfile

import pyarrow as pa
import pytest

from sama import storage


def test_local_write_is_atomic_and_leaves_no_temp(tmp_path):
    uri = str(tmp_path / "a" / "b.bin")
    storage.write_bytes(uri, b"one")
    storage.write_bytes(uri, b"two")
    assert storage.read_bytes(uri) == b"two"
    assert os.listdir(tmp_path / "a") == ["b.bin"]


def test_list_files_hides_partial_writes(tmp_path):
    storage.write_text(str(tmp_path / "x.parquet"), "x")
    (tmp_path / ".tmp-abc-y.parquet").write_text("partial")
    assert storage.list_files(str(tmp_path), ".parquet") == [str(tmp_path / "x.parquet")]


def test_unknown_scheme_is_refused():
    with pytest.raises(storage.StorageError, match="gs://b/x"):
        storage.filesystem("gs://b/x")


def _tar(path: str, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_s3_round_trip(s3_bucket, tmp_path):
    uri = storage.join(s3_bucket, "dir", "f.txt")
    storage.write_text(uri, "hello")
    assert storage.exists(uri) and storage.size(uri) == 5
    assert storage.read_text(uri) == "hello"
    assert storage.list_files(storage.join(s3_bucket, "dir")) == [uri]
    t = pa.table({"a": [1, 2, 3]})
    storage.write_parquet(storage.join(s3_bucket, "t", "p1.parquet"), t)
    storage.write_parquet(storage.join(s3_bucket, "t", "p2.parquet"), t)
    assert storage.read_parquet(storage.join(s3_bucket, "t")).num_rows == 6
    assert not storage.exists(storage.join(s3_bucket, "nope"))
    with pytest.raises(FileNotFoundError, match="nope"):
        storage.read_bytes(storage.join(s3_bucket, "nope"))


def test_tar_members_read_in_place_local_and_s3(s3_bucket, tmp_path):
    local = str(tmp_path / "00000.tar")
    _tar(local, {"k.1.jpg": b"src", "k.2.jpg": b"target!"})
    remote = storage.join(s3_bucket, "shards", "00000.tar")
    storage.write_bytes(remote, open(local, "rb").read())
    for archive in (local, remote):
        assert sorted(storage.tar_members(archive)) == ["k.1.jpg", "k.2.jpg"]
        assert storage.read_bytes(f"{archive}::k.2.jpg") == b"target!"
        assert storage.size(f"{archive}::k.1.jpg") == 3
        assert not storage.exists(f"{archive}::zzz")
    with pytest.raises(storage.StorageError, match="compressed"):
        storage.tar_members(str(tmp_path / "x.tar.gz"))


def test_materialize_downloads_a_prefix_once(s3_bucket, tmp_path):
    storage.write_text(storage.join(s3_bucket, "model", "config.json"), "{}")
    storage.write_bytes(storage.join(s3_bucket, "model", "sub", "w.bin"), b"\1\2")
    local = storage.materialize(storage.join(s3_bucket, "model"), cache_dir=str(tmp_path))
    assert open(os.path.join(local, "config.json")).read() == "{}"
    assert open(os.path.join(local, "sub", "w.bin"), "rb").read() == b"\1\2"
    storage.write_text(storage.join(s3_bucket, "model", "config.json"), "changed")
    assert storage.materialize(storage.join(s3_bucket, "model"), cache_dir=str(tmp_path)) == local  # cached
