"""Storage that every node of a cluster can reach: one path-like type over ``pyarrow.fs``.

A run directory, its checkpoints and Ray Train's storage may live on this machine's disk (one machine
only), on a file system every node mounts (NFS, EFS, Filestore), or in an object store (``s3://``,
``gs://``, and S3-compatible servers: ``s3://bucket/path?endpoint_override=http://host:9000``).
:class:`Location` gives them the small part of :class:`pathlib.Path` the product needs, through the
file systems of ``pyarrow.fs`` (the ones Ray Train itself uses), so code above it never branches on
where the bytes live.

Credentials never ride in a URI: they come from the environment (``AWS_*``,
``GOOGLE_APPLICATION_CREDENTIALS``) or the node's role. A URI is written to ``config.yaml``, logs and
reports, so one that carries a key (``s3://KEY:SECRET@bucket/...``, ``?secret_key=...``) is refused.

Atomicity: on a local or mounted file system a write goes to a temporary sibling and is renamed into
place; an object store makes an object visible only once its upload completes, so a plain put is
already all-or-nothing there.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import shutil
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow.fs as pafs

from coalora.errors import StorageError
from coalora.io import atomic_write_bytes

__all__ = ["Location", "StorageError", "is_uri", "open_location", "local_copy"]


def is_uri(text: str | os.PathLike) -> bool:
    """Whether ``text`` names a location by URI (``s3://...``, ``gs://...``, ``file://...``)."""
    return "://" in str(text)


@dataclass(frozen=True)
class Location:
    """A file or directory on some ``pyarrow.fs`` file system.

    Attributes:
        fs: the file system.
        path: the path inside ``fs`` (``bucket/key`` for object stores, absolute for local ones).
        query: the URI's query string (``endpoint_override=...``), kept so that :meth:`uri` round-trips.
        scheme: ``"s3"``, ``"gs"``, ... or ``""`` for a local path.
    """

    fs: pafs.FileSystem
    path: str
    scheme: str = ""
    query: str = ""

    # ------------------------------------------------------------------ naming
    def __truediv__(self, part: str) -> "Location":
        return Location(self.fs, posixpath.join(self.path, str(part)), self.scheme, self.query)

    def __str__(self) -> str:
        return self.uri

    @property
    def uri(self) -> str:
        """How a person (and :func:`open_location`) names this location."""
        if not self.scheme:
            return self.path
        q = f"?{self.query}" if self.query else ""
        return f"{self.scheme}://{self.path}{q}"

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    @property
    def is_local(self) -> bool:
        """On this machine's file system (a local disk or a mount), as opposed to an object store."""
        return isinstance(self.fs, pafs.LocalFileSystem)

    # ------------------------------------------------------------------ queries
    def _info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def iterdir(self) -> Iterator["Location"]:
        """The direct children of a directory (none when it does not exist)."""
        if not self.is_dir():
            return iter(())
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=False, allow_not_found=True))
        return iter(sorted((Location(self.fs, i.path, self.scheme, self.query) for i in infos),
                           key=lambda loc: loc.path))

    # ------------------------------------------------------------------ reading
    def read_bytes(self) -> bytes:
        try:
            with self.fs.open_input_stream(self.path) as f:
                return f.read()
        except FileNotFoundError:
            raise StorageError(f"{self.uri}: no such file") from None

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    # ------------------------------------------------------------------ writing
    def mkdir(self, parents: bool = True, exist_ok: bool = True) -> None:
        """Create the directory (object stores have no directories: a no-op there beyond a marker)."""
        if not exist_ok and self.exists():
            raise FileExistsError(self.uri)
        self.fs.create_dir(self.path, recursive=parents)

    def write_bytes(self, data: bytes) -> None:
        """Write ``data`` all-or-nothing (see the module docstring)."""
        parent = posixpath.dirname(self.path)
        if self.is_local:
            os.makedirs(parent, exist_ok=True)
            atomic_write_bytes(self.path, data)
            return
        with self.fs.open_output_stream(self.path) as f:
            f.write(data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def rmtree(self) -> None:
        """Delete a directory and everything under it (nothing when it does not exist)."""
        if self.is_dir():
            self.fs.delete_dir(self.path)

    def remove(self) -> None:
        """Delete whatever is here: a file or a whole directory."""
        info = self._info()
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path)
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self.path)

    # ------------------------------------------------------------------ whole directories
    def download_to(self, local_dir: str | os.PathLike) -> Path:
        """Copy this directory's files into ``local_dir`` (created); returns it."""
        out = Path(local_dir)
        out.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(self.path, str(out.resolve()), source_filesystem=self.fs,
                        destination_filesystem=pafs.LocalFileSystem())
        return out

    def read_files(self) -> dict[str, bytes]:
        """A small directory as ``{file name: bytes}`` (its direct children that are files)."""
        return {c.name: c.read_bytes() for c in self.iterdir() if c.is_file()}

    def write_files(self, files: dict[str, bytes]) -> None:
        """The inverse of :meth:`read_files`."""
        for name, blob in files.items():
            (self / name).write_bytes(blob)


# Query keys that name a secret. pyarrow's own options (region, scheme, endpoint_override,
# tls_ca_file_path, allow_bucket_creation, project_id, retry_limit_seconds, ...) match none of these.
_SECRET_KEY = re.compile(r"key|secret|token|password|credential", re.IGNORECASE)


def _refuse_credentials(parsed: urllib.parse.SplitResult) -> None:
    """Raise when a URI carries credentials: in its user part (pyarrow reads ``s3://KEY:SECRET@...``
    as an access key) or in its query. The message names where, never the value."""
    where = []
    # "anonymous" (pyarrow's GCS anonymous access) is no credential; any other user part is a key.
    if parsed.password is not None or (parsed.username is not None and parsed.username != "anonymous"):
        where.append("user part")
    where += sorted({k for k, _ in urllib.parse.parse_qsl(parsed.query, keep_blank_values=True)
                     if _SECRET_KEY.search(k)})
    if where:
        bare = f"{parsed.scheme}://{parsed.hostname or ''}{parsed.path}"
        raise StorageError(f"storage URI {bare} carries credentials ({', '.join(where)}): they would be "
                           "written to config.yaml and the logs; credentials come from the environment "
                           "(AWS_*, GOOGLE_APPLICATION_CREDENTIALS) or the node's role, never from the URI")


def open_location(where: str | os.PathLike | Location) -> Location:
    """The :class:`Location` named by a local path (relative ones are made absolute) or a URI.

    Raises:
        StorageError: an unknown scheme, a URI that carries credentials, or a file system that cannot
            be reached or configured.
    """
    if isinstance(where, Location):
        return where
    text = str(where)
    if not is_uri(text):
        return Location(pafs.LocalFileSystem(), str(Path(text).expanduser().absolute()))
    parsed = urllib.parse.urlsplit(text)
    _refuse_credentials(parsed)
    try:
        fs, path = pafs.FileSystem.from_uri(text)
    except (OSError, ValueError) as e:  # pyarrow's errors for a bad URI (ArrowInvalid is a ValueError)
        raise StorageError(f"cannot use storage {text!r}: {e}") from None
    if isinstance(fs, pafs.LocalFileSystem):
        return Location(fs, path)
    return Location(fs, path.rstrip("/"), parsed.scheme, parsed.query)


def local_copy(where: str | os.PathLike | Location, cache: str | os.PathLike) -> Path:
    """A local directory with the files of ``where``: the path itself when it is local, else a copy
    under ``cache`` (keyed by the URI, refreshed on every call since a checkpoint may be rewritten)."""
    loc = open_location(where)
    if loc.is_local:
        return Path(loc.path)
    if not loc.is_dir():
        raise StorageError(f"{loc.uri}: no such directory")
    key = hashlib.sha1(loc.uri.encode()).hexdigest()[:16]
    out = Path(cache) / key / loc.name
    if out.exists():
        shutil.rmtree(out)
    return loc.download_to(out)
