"""Error types whose message is meant for the user: the CLI prints it as one line,
the UI shows it in the page."""


class RetrievalAppError(Exception):
    """Base class for every error the user should see as a clear message."""


class DatasetError(RetrievalAppError):
    """A folder cannot be used as a data set (no images, too few classes, ...)."""


class ImageDecodeError(RetrievalAppError):
    """One image could not be read or decoded."""


class ModelError(RetrievalAppError):
    """Unknown model name, incompatible weights, bad configuration."""


class WeightsUnavailableError(ModelError):
    """Pretrained weights could not be obtained (offline, no local file)."""


class CheckpointError(RetrievalAppError):
    """A checkpoint is missing, unreadable or of an unknown format."""


class TrainingCancelled(RetrievalAppError):
    """Raised inside a worker when the user cancelled the run."""
