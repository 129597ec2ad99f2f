"""User-facing errors.

Every mistake a user can make (a wrong path, a typo in a config, a corrupt file) raises a subclass of
`ReidAccelError` whose message is one line naming the file, field or value at fault. The CLI prints that
line and exits with status 2; anything else is a bug and keeps its traceback.
"""


class ReidAccelError(ValueError):
    """Base class of every error caused by bad input."""


class ConfigError(ReidAccelError):
    """A config file or override names an unknown key or holds a value of the wrong type."""


class DatasetLayoutError(ReidAccelError):
    """A dataset folder does not have the layout its benchmark expects."""


class ModelLoadError(ReidAccelError):
    """A model folder, hub repo or checkpoint cannot be loaded."""


class HubError(ReidAccelError):
    """The Hugging Face Hub cannot be reached, or refuses a request (not logged in, no access, offline mode)."""


class InputError(ReidAccelError):
    """An image, array or box handed to the inference or export API is not what it expects."""


class ExportError(ReidAccelError):
    """A model cannot be exported as asked, or its exported form does not reproduce its features."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type when it has none), for one-line reports."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
