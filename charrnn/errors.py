"""The one exception type a user can cause.

Anything the user can get wrong (a flag, a file, a checkpoint) raises
`UserError`; the CLI prints its message as one line and exits with code 2.
Everything else is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """A problem with the user's input; the message says what is wrong and what to do.

    A ValueError, so that Python callers of the API can catch it as the bad value it is."""

    exit_code = 2


def checkpoint_write_error(folder, error: OSError, resumable: bool = True) -> UserError:
    """The one line for a run directory that cannot be written: a full disk or a read-only
    folder is the user's to fix. `resumable`: a checkpoint existed before this write."""
    return UserError(f"cannot write a checkpoint in {folder} ({error.strerror or error}); free space or fix permissions"
                     + (", then --resume: the previous checkpoint is intact" if resumable else ""))


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 3


DISTRIBUTION = "charrnn-toolkit"   # the name on the package index; the import name and the command are charrnn


def install_hint(extra: str) -> str:
    """How to install an optional extra, for a clone and for an installed package alike."""
    return f"pip install '{DISTRIBUTION}[{extra}]' (in a clone of charrnn: pip install -e '.[{extra}]')"


def require_package(module: str, what: str, extra: str):
    """Import an optional package, or raise a one-line UserError saying which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{what} needs the {module} package, which is not installed: {install_hint(extra)}") from None
