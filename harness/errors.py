"""The exception type the CLI turns into a one-line message and exit code 2, and how any other
exception of a cell becomes that cell's status."""


class UserError(Exception):
    """A problem with what the user asked for (bad suite, missing file, no GPU, ...)."""


class ConfigError(UserError, ValueError):
    """A suite, shape or option that cannot be run as written; the message names the key. The one
    validation error of the harness (variants, which import nothing of it, raise VariantError,
    which config.check_builds turns into this)."""


class Diverged(Exception):
    """Training produced a non-finite loss: a result to record for the variant, not a crash."""

    def __init__(self, step: int, value: float, where: str = "train"):
        super().__init__(f"{where} loss diverged at step {step}: {value}")
        self.step, self.value, self.where = step, value, where


def classify(exc: BaseException) -> tuple[str, str, dict]:
    """(status, one-line message, {}) for an exception raised by a cell: `diverged` for a
    non-finite loss, `oom` only on evidence (an allocator's out-of-memory error, MemoryError),
    `error` otherwise (SystemExit too: a variant that exits fails its cell only)."""
    import torch

    if isinstance(exc, SystemExit):  # a variant's sys.exit: the cell fails, its process goes on
        return "error", f"SystemExit: the cell's code called sys.exit({repr(exc.code)[:100]}); a variant must " \
                        "raise, not exit", {}
    msg = (f"{type(exc).__name__}: {exc}".splitlines() or [type(exc).__name__])[0][:500]
    if isinstance(exc, Diverged):
        return "diverged", msg, {}
    text = str(exc).lower()
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in text \
            or "can't allocate memory" in text:
        return "oom", msg, {}
    return "error", msg, {}
