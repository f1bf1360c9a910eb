"""Backend and worker settings, read from the environment once per process (`Settings.from_env()`).

Every variable is listed in `ENV_VARS`; docs/configuration.md describes each (a test keeps the two in step).
Nothing else in backend/ or worker/ reads the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

from tagclip_core.types import MaskMode

from .errors import SettingsError
from .labelstudio.auth import Source

# Label Studio's read timeout for /predict (ML_TIMEOUT_PREDICT, 100 s by default). PREDICT_TIMEOUT
# must stay below it, or Label Studio gives up before we answer and stores nothing.
LABEL_STUDIO_PREDICT_TIMEOUT = 100.0
# Server threads per process that a waiting /predict never takes (for /health, /setup, /metrics, /jobs).
RESERVED_THREADS = 4
# The TAGCLIP_MASK_MODE (and extra_params.mask_mode) value that switches region controls off.
MASKS_OFF = "off"
# TAGCLIP_MASK_MODE values: a mask mode, or off.
MASK_MODE_CHOICES = (*(m.value for m in MaskMode), MASKS_OFF)


@dataclass(frozen=True)
class Settings:
    """Everything the backend and the worker take from the environment."""

    # --- model (TAGCLIP_*) ---
    # open_clip architecture name.
    model_name: str = "ViT-B-16"
    # open_clip pretrained tag, used when no checkpoint is given.
    pretrained: str = "openai"
    # Local checkpoint file (OpenAI or open_clip format); overrides `pretrained`.
    checkpoint: str | None = None
    # "auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...
    device: str = "auto"
    # "fp32", "bf16" or "fp16" (the last two on CUDA only).
    precision: str = "fp32"
    # Weights and text-classifier cache directory; None = the user cache dir.
    cache_dir: str | None = None
    # Background words: "voc", "coco", "none" or a comma list; extra_params.background overrides it.
    background: str = "voc"
    # Masks of region controls (BrushLabels, RectangleLabels, PolygonLabels) that do not say: "coarse" (nearly
    # free), "clip-es" (the paper's CLS-SEG, slower) or "off" (region controls are skipped); a project's
    # extra_params.mask_mode and the tags' model_mask_mode / model_masks override it.
    mask_mode: str = "coarse"
    # Regions smaller than this many pixels are dropped; extra_params.min_region_area and model_min_region_area
    # override.
    min_region_area: int = 0
    # Allow downloading pretrained weights at first start.
    allow_download: bool = True

    # --- queue ---
    # redis://host:port/db; unset = embedded mode (the engine runs inside the web process).
    redis_url: str | None = None
    # RQ queue name; also the prefix of the backend's own Redis keys.
    queue_name: str = "tagclip"
    # Most tasks per job; a batch is split into ceil(n / CHUNK_SIZE) jobs spread over the workers.
    chunk_size: int = 8
    # Seconds a job may run before RQ kills it (a timed-out job counts as failed and is retried).
    job_timeout: int = 300
    # How many times a failed or abandoned job (worker killed) is re-run.
    job_retries: int = 2
    # Seconds /predict waits for its jobs; tasks not done by then are left unpredicted (docs/label-studio.md).
    predict_timeout: float = 80.0
    # Seconds between a worker's heartbeats; a worker silent for 3 beats counts as dead and its job
    # is re-queued.
    worker_heartbeat: float = 5.0
    # Threads running jobs in embedded mode.
    embedded_threads: int = 2

    # --- Label Studio ---
    # Base URL of Label Studio for relative image URLs; overrides the hostname /setup sends. Its host may be on a
    # private network (it is trusted like ALLOWED_IMAGE_HOSTS).
    label_studio_url: str | None = None
    # Legacy token or personal access token (JWT) of LABEL_STUDIO_URL's Label Studio, sent nowhere else; overrides
    # the token /setup sends. Needs LABEL_STUDIO_URL.
    label_studio_api_key: str | None = None
    # Seconds for one Label Studio REST call of the bulk path (listing, write-back, checks, /jobs): a call not
    # answered by then counts as unanswered.
    label_studio_timeout: float = 120.0
    # Seconds after LABEL_STUDIO_TIMEOUT that an unanswered bulk write (a timeout, a 5xx, a reset connection) may
    # still land in Label Studio: until then its chunk asks Label Studio and does not write those tasks again.
    write_settle_timeout: float = 240.0
    # Seconds a bulk chunk keeps retrying, with backoff, a Label Studio that fails and images whose download failed
    # for a reason that may pass (timeout, HTTP 5xx/429, 401/403, refused connection); then they are reported failed.
    transient_retry_time: float = 120.0

    # --- images ---
    # Largest image download in bytes.
    max_download_bytes: int = 50 * 1024 * 1024
    # Seconds for one image download (connect + read, whole body).
    download_timeout: float = 20.0
    # Largest image in pixels (width * height), checked before decoding.
    max_image_pixels: int = 100_000_000
    # Parallel downloads per job.
    download_threads: int = 4
    # Most tasks whose images one job holds decoded at once: the group being predicted and the next one,
    # downloading meanwhile (a 100 MP photo is ~300 MB decoded; a bulk chunk may have 1,000 tasks).
    images_in_memory: int = 8
    # Hosts on private networks (loopback, RFC 1918, link-local, ...) that task images may come from, comma
    # separated ("minio", "*.corp.example"); besides these and LABEL_STUDIO_URL's host, only public addresses.
    allowed_image_hosts: str | None = None

    # --- limits of what a caller can ask ---
    # Most tasks one /predict may carry (Label Studio sends a whole selection in one request): more get 413.
    max_predict_tasks: int = 1000
    # Most labels one control of a label config may have (more get 422 at /setup and /predict).
    max_labels_per_control: int = 10_000

    # --- server ---
    host: str = "0.0.0.0"
    port: int = 9090
    # Optional basic auth for /setup, /predict and /metrics (both or neither).
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = None
    # gunicorn threads (gthread) per process. A waiting /predict holds one; RESERVED_THREADS of them are kept
    # for /health, /setup and the other short routes, so Label Studio's 1 s and 3 s never starve.
    server_threads: int = 64
    # gunicorn processes; more than 1 only with REDIS_URL (one engine per process otherwise).
    server_workers: int = 1
    log_level: str = "INFO"

    # --- memory of reviewed examples (projects with extra_params.learn; docs/learning.md) ---
    # Most reviewed examples a project's memory keeps; the oldest go first.
    memory_max_examples: int = 5000
    # A new memory generation, so a new model_version, every this many changes to a project's memory.
    memory_generation_every: int = 20
    # Reviewed positives a label needs before the memory calibrates a threshold of its own.
    memory_min_support: int = 3

    def __post_init__(self) -> None:
        if (self.basic_auth_user is None) != (self.basic_auth_pass is None):
            raise SettingsError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
        if self.label_studio_api_key and not self.label_studio_url:
            raise SettingsError(
                "LABEL_STUDIO_API_KEY is set without LABEL_STUDIO_URL: set the URL of the Label Studio this key "
                "belongs to (the key is only ever sent there)"
            )
        if not 0 < self.predict_timeout < LABEL_STUDIO_PREDICT_TIMEOUT:
            raise SettingsError(
                f"PREDICT_TIMEOUT must be in (0, {LABEL_STUDIO_PREDICT_TIMEOUT:g}) s, below Label Studio's "
                f"ML_TIMEOUT_PREDICT; got {self.predict_timeout}"
            )
        for name in (
            "chunk_size",
            "job_timeout",
            "max_download_bytes",
            "max_image_pixels",
            "download_threads",
            "images_in_memory",
            "max_predict_tasks",
            "max_labels_per_control",
            "server_threads",
            "server_workers",
            "embedded_threads",
            "port",
            "memory_max_examples",
            "memory_generation_every",
            "memory_min_support",
        ):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name.upper()} must be positive, got {getattr(self, name)}")
        if self.job_retries < 0:
            raise SettingsError(f"JOB_RETRIES must be >= 0, got {self.job_retries}")
        if self.worker_heartbeat <= 0 or self.download_timeout <= 0 or self.label_studio_timeout <= 0:
            raise SettingsError("WORKER_HEARTBEAT, DOWNLOAD_TIMEOUT and LABEL_STUDIO_TIMEOUT must be positive")
        if self.write_settle_timeout < 0 or self.transient_retry_time < 0:
            raise SettingsError("WRITE_SETTLE_TIMEOUT and TRANSIENT_RETRY_TIME must be >= 0")
        if self.server_threads <= RESERVED_THREADS:
            raise SettingsError(
                f"SERVER_THREADS must be more than the {RESERVED_THREADS} kept for /health and /setup, got "
                f"{self.server_threads}"
            )
        if self.server_workers > 1 and not self.redis_url:
            raise SettingsError("SERVER_WORKERS > 1 needs REDIS_URL (embedded mode keeps one engine per process)")
        if self.mask_mode not in MASK_MODE_CHOICES:
            raise SettingsError(f"TAGCLIP_MASK_MODE must be one of {MASK_MODE_CHOICES}, got {self.mask_mode!r}")
        if self.min_region_area < 0:
            raise SettingsError(f"TAGCLIP_MIN_REGION_AREA must be >= 0, got {self.min_region_area}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise SettingsError(f"TAGCLIP_PRECISION must be fp32, bf16 or fp16, got {self.precision!r}")

    @property
    def predict_slots(self) -> int:
        """Requests that may wait on predictions at once per process (/predict): the threads not reserved."""
        return self.server_threads - RESERVED_THREADS

    @property
    def embedded(self) -> bool:
        """True when there is no Redis: the engine runs in the web process."""
        return not self.redis_url

    @property
    def label_studio(self) -> Source | None:
        """The configured Label Studio (LABEL_STUDIO_URL with its key), or None."""
        return Source(self.label_studio_url, self.label_studio_api_key) if self.label_studio_url else None

    @property
    def allowed_hosts(self) -> tuple[str, ...]:
        """ALLOWED_IMAGE_HOSTS as lower-case host patterns."""
        return tuple(h.strip().lower() for h in (self.allowed_image_hosts or "").split(",") if h.strip())

    @property
    def basic_auth(self) -> tuple[str, str] | None:
        if self.basic_auth_user is None or self.basic_auth_pass is None:
            return None
        return self.basic_auth_user, self.basic_auth_pass

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `environ` (default: os.environ). Unset or empty variables keep defaults."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        types = {f.name: f.type for f in fields(cls)}
        for field_name, var in ENV_VARS.items():
            raw = env.get(var)
            if raw is None or raw.strip() == "":
                continue
            values[field_name] = _parse(var, raw.strip(), types[field_name])
        return cls(**values)


def _parse(var: str, raw: str, annotation: object) -> object:
    kind = str(annotation)
    try:
        if kind.startswith("bool"):
            lowered = raw.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true/false")
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
    except ValueError as e:
        raise SettingsError(f"{var}={raw!r}: {e}") from e
    return raw


# Field name -> environment variable. Names follow label-studio-ml where it has one.
ENV_VARS: dict[str, str] = {
    "model_name": "TAGCLIP_MODEL",
    "pretrained": "TAGCLIP_PRETRAINED",
    "checkpoint": "TAGCLIP_CHECKPOINT",
    "device": "TAGCLIP_DEVICE",
    "precision": "TAGCLIP_PRECISION",
    "cache_dir": "TAGCLIP_CACHE_DIR",
    "background": "TAGCLIP_BACKGROUND",
    "mask_mode": "TAGCLIP_MASK_MODE",
    "min_region_area": "TAGCLIP_MIN_REGION_AREA",
    "allow_download": "TAGCLIP_ALLOW_DOWNLOAD",
    "redis_url": "REDIS_URL",
    "queue_name": "TAGCLIP_QUEUE",
    "chunk_size": "CHUNK_SIZE",
    "job_timeout": "JOB_TIMEOUT",
    "job_retries": "JOB_RETRIES",
    "predict_timeout": "PREDICT_TIMEOUT",
    "worker_heartbeat": "WORKER_HEARTBEAT",
    "embedded_threads": "EMBEDDED_THREADS",
    "label_studio_url": "LABEL_STUDIO_URL",
    "label_studio_api_key": "LABEL_STUDIO_API_KEY",
    "label_studio_timeout": "LABEL_STUDIO_TIMEOUT",
    "write_settle_timeout": "WRITE_SETTLE_TIMEOUT",
    "transient_retry_time": "TRANSIENT_RETRY_TIME",
    "max_download_bytes": "MAX_DOWNLOAD_BYTES",
    "download_timeout": "DOWNLOAD_TIMEOUT",
    "max_image_pixels": "MAX_IMAGE_PIXELS",
    "download_threads": "DOWNLOAD_THREADS",
    "images_in_memory": "IMAGES_IN_MEMORY",
    "allowed_image_hosts": "ALLOWED_IMAGE_HOSTS",
    "max_predict_tasks": "MAX_PREDICT_TASKS",
    "max_labels_per_control": "MAX_LABELS_PER_CONTROL",
    "host": "HOST",
    "port": "PORT",
    "basic_auth_user": "BASIC_AUTH_USER",
    "basic_auth_pass": "BASIC_AUTH_PASS",
    "server_threads": "SERVER_THREADS",
    "server_workers": "SERVER_WORKERS",
    "log_level": "LOG_LEVEL",
    "memory_max_examples": "TAGCLIP_MEMORY_MAX_EXAMPLES",
    "memory_generation_every": "TAGCLIP_MEMORY_GENERATION_EVERY",
    "memory_min_support": "TAGCLIP_MEMORY_MIN_SUPPORT",
}
