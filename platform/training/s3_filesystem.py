"""A pyarrow filesystem for s3:// whose writes go through boto3 (for Ray Train's storage).

pyarrow's S3 output stream always completes a multipart upload and misreads some servers'
completion replies (moto, some self-hosted S3: "error embedded in a 200 OK response"),
so Ray Train's checkpoint uploads fail there. This handler keeps pyarrow for reads and
listings and sends each written object as one boto3 upload when the stream closes
(``sama.storage.write_bytes`` does the same for our own writes); what is written is spooled
to a local temporary file past 64 MiB, so a multi-GB shard never sits in memory.
Picklable: Ray ships it to the controller and the workers.
"""

from __future__ import annotations

import io
import tempfile

import pyarrow as pa
import pyarrow.fs as pafs

SPOOL_BYTES = 64 * 2**20


class _Upload(io.RawIOBase):
    def __init__(self, client, bucket: str, key: str):
        super().__init__()
        self._client, self._bucket, self._key = client, bucket, key
        self._spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        return self._spool.write(data)

    def close(self) -> None:
        if not self.closed:
            try:
                self._spool.seek(0)
                self._client.upload_fileobj(self._spool, self._bucket, self._key)  # multipart past 8 MiB
            finally:
                self._spool.close()
        super().close()


class Boto3WriteS3Handler(pafs.FileSystemHandler):
    def __init__(self, endpoint: str | None = None, region: str | None = None):
        self.endpoint, self.region = endpoint, region
        self._fs = self._client = None

    def __getstate__(self):
        return {"endpoint": self.endpoint, "region": self.region}

    def __setstate__(self, state):
        self.__init__(**state)

    @property
    def fs(self) -> pafs.S3FileSystem:
        if self._fs is None:
            from sama import storage

            self._fs = storage.filesystem("s3://x")[0]  # configured like every other S3 read of ours
        return self._fs

    @property
    def client(self):
        if self._client is None:
            import boto3

            self._client = boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region)
        return self._client

    # --- reads, listings, deletes: pyarrow ------------------------------------------------------
    def get_type_name(self):
        return "sama-s3"

    def equals(self, other):
        return isinstance(other, Boto3WriteS3Handler) and other.endpoint == self.endpoint

    def normalize_path(self, path):
        return self.fs.normalize_path(path)

    def get_file_info(self, paths):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        pass  # S3 has no directories; a key's prefix exists once an object is under it

    def delete_dir(self, path):
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise OSError("refusing to delete the contents of every bucket")

    def delete_file(self, path):
        self.fs.delete_file(path)

    def open_input_stream(self, path):
        return self.fs.open_input_stream(path)

    def open_input_file(self, path):
        return self.fs.open_input_file(path)

    # --- writes: boto3 ----------------------------------------------------------------------------
    def open_output_stream(self, path, metadata):
        bucket, key = path.split("/", 1)
        return pa.PythonFile(_Upload(self.client, bucket, key), mode="w")

    def open_append_stream(self, path, metadata):
        raise NotImplementedError("S3 objects cannot be appended to")

    def copy_file(self, src, dest):
        sb, sk = src.split("/", 1)
        db, dk = dest.split("/", 1)
        self.client.copy_object(CopySource={"Bucket": sb, "Key": sk}, Bucket=db, Key=dk)

    def move(self, src, dest):
        self.copy_file(src, dest)
        self.fs.delete_file(src)


def s3_filesystem() -> pafs.PyFileSystem:
    import os

    from sama import storage

    return pafs.PyFileSystem(Boto3WriteS3Handler(storage.endpoint_url(), os.environ.get("AWS_REGION")))
