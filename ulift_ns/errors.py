"""User mistakes vs. bugs: how ``ulift`` commands report the first without a traceback.

A command raises one of ``USER_ERRORS`` (``UserError`` or an existing error class whose
message already names the file and the fix); ``ulift_ns.cli.main`` prints
``ulift <command>: <message>`` on stderr and exits with code 2.  Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Iterator, Tuple, Type

USAGE_EXIT_CODE = 2


class UserError(Exception):
    """A mistake the user can fix; the message says what is wrong and how to fix it."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or folder the command needs does not exist."""


class InvalidArgumentError(UserError, ValueError):
    """Command-line arguments that cannot work together or cannot be parsed."""


class NotAUnifiedLiftRunError(UserError, ValueError):
    """The config is not a nerfstudio run, or not one that ulift can read."""


class UserExit(SystemExit):
    """Exit code 2 with the message as its text (``str(err)``), already printed on stderr."""

    def __init__(self, message: str):
        super().__init__(USAGE_EXIT_CODE)
        self.message = message

    def __str__(self) -> str:
        return self.message


def user_errors() -> Tuple[Type[BaseException], ...]:
    """Every exception class a ``ulift`` command raises for a user's mistake (imported lazily: cheap CLI start)."""
    from ulift_ns.convert import LlffFormatError
    from ulift_ns.dataparser import SceneFormatError
    from ulift_ns.export import SelectionError, UnknownObjectError
    from ulift_ns.health import NonFiniteModelError, NonFiniteTrainingError
    from ulift_ns.labelio import LabelFileError, OutputExistsError
    from ulift_ns.masks import MaskSettingsError
    from ulift_ns.trainer import TrainingInputError

    return (
        UserError, OutputExistsError, LabelFileError, SelectionError, UnknownObjectError, NonFiniteModelError,
        MaskSettingsError, LlffFormatError, SceneFormatError, TrainingInputError, NonFiniteTrainingError,
        FileNotFoundError, FileExistsError,
    )  # fmt: skip


@contextmanager
def quiet_known_warnings() -> Iterator[None]:
    """Hide the FutureWarnings nerfstudio and torch print on every load (``torch.load``, ``GradScaler``...)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*LPIPS.*")
        yield
