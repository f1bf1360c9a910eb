"""Exceptions of the backend and the worker. Messages carry the offending value.

`HTTPError` subclasses carry the status the web layer answers with, as `{"error": message}`.
The others are per-task failures (one task gets an empty result) or setup mistakes.
"""

from __future__ import annotations


class BackendError(Exception):
    """Base class of every error the backend or the worker raises on purpose."""


class SettingsError(BackendError):
    """An environment variable has a value we cannot use."""


class HTTPError(BackendError):
    """An error that becomes an HTTP answer `{"error": str(self)}` with `status`."""

    status: int = 500


class BadRequestError(HTTPError):
    """The request body is not what the route expects (not JSON, wrong shape)."""

    status = 400


class UnauthorizedError(HTTPError):
    """The request's credentials are missing or wrong (basic auth, or a route's own Label Studio key)."""

    status = 401


class ForbiddenError(HTTPError):
    """The caller's credentials do not give access to what it asked for."""

    status = 403


class PayloadTooLargeError(HTTPError):
    """The request is over a limit (body size, tasks per /predict)."""

    status = 413


class LabelConfigError(HTTPError):
    """The label config cannot be parsed, or a control we would predict is unusable."""

    status = 422


class ServiceUnavailableError(HTTPError):
    """Nothing can be predicted right now; Label Studio may retry later."""

    status = 503


class BusyError(ServiceUnavailableError):
    """Every /predict slot of the process is taken; the caller should try again shortly."""


class QueueUnavailableError(ServiceUnavailableError):
    """Redis cannot be reached (connection refused, timeout)."""


class EngineUnavailableError(ServiceUnavailableError):
    """The in-process engine failed to load, or did not finish loading in time."""


class PayloadError(BackendError):
    """A job payload does not match the job schema (a bug or a version skew between backend and worker)."""


class JobRefusedError(BackendError):
    """A job in Redis names a function the workers do not run, or asks for callbacks."""


class ModelMismatchError(BackendError):
    """The worker runs other weights or settings than the backend computed its model_version for."""


class ImageFetchError(BackendError):
    """An image of a task cannot be fetched, for good (not found, too large, refused by policy): that task gets an
    empty result. Failures that may pass are DownloadUnavailableError."""


class ImageSourceError(ImageFetchError):
    """The image reference is not something we can fetch (unknown scheme, relative URL without a host)."""


class DownloadError(ImageFetchError):
    """The download failed: HTTP error status, connection error or timeout."""


class DownloadRefusedError(DownloadError):
    """The address policy refused the URL (a non-public address that is not allowed); the task fails for good."""


class DownloadTooLargeError(DownloadError):
    """The image is larger than MAX_DOWNLOAD_BYTES."""


class DownloadUnavailableError(DownloadError):
    """The download failed for a reason that may pass: a timeout, a refused connection or failed DNS lookup, a
    broken-off body, HTTP 5xx, 429, 408, or 401/403 (a revoked or disabled key). The task is predicted again later,
    never stored empty."""


class LabelStudioAuthError(DownloadUnavailableError):
    """Label Studio refused the key (legacy token disabled, wrong key, PAT refresh failed)."""


class LabelStudioAPIError(HTTPError):
    """Label Studio answered a REST call with an error status, or could not be reached.

    `ls_status` is Label Studio's HTTP status (None when there was no answer). The backend answers 502.
    """

    status = 502

    def __init__(self, message: str, ls_status: int | None = None) -> None:
        super().__init__(message)
        self.ls_status = ls_status


class MemoryUnavailableError(ServiceUnavailableError):
    """A learning project's memory cannot be read (its store is unreachable), so its model_version is unknown."""


class LearningError(BackendError):
    """A learning job cannot run: a malformed payload, or a project whose memory cannot be built."""


class WriteInDoubtError(LabelStudioAPIError):
    """Label Studio did not confirm a bulk write, nor show its predictions, within the chunk's retries: the tasks
    stay claimed and in doubt, and the chunk's next run asks Label Studio again before writing anything."""


class QueueRequiredError(ServiceUnavailableError):
    """Bulk pre-annotation needs Redis (REDIS_URL): its state and chunks live there."""


class BulkJobNotFoundError(HTTPError):
    """No bulk job with this id (it never existed, or its state expired from Redis)."""

    status = 404


class BulkSetupError(HTTPError):
    """A bulk request cannot start: no label config to predict, a filter we cannot page, a bad option."""

    status = 400
