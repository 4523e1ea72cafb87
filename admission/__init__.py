"""admission: admission control for ASGI services in one middleware.

Token-bucket rate limiting per client (in memory or shared through Redis), a concurrency
window, read/write/idle/deadline timeouts and a graceful drain. See README.md.
"""

from admission.context import (
    deadline,
    draining,
    request_lifetime,
    service_lifetime,
    time_left,
)
from admission.errors import AdmissionError, ConfigError, StorageError, StorageTimeout
from admission.lifetime import Lifetime
from admission.middleware import AdmissionMiddleware
from admission.settings import Settings

__all__ = [
    "AdmissionError",
    "AdmissionMiddleware",
    "ConfigError",
    "Lifetime",
    "Settings",
    "StorageError",
    "StorageTimeout",
    "deadline",
    "draining",
    "request_lifetime",
    "service_lifetime",
    "time_left",
]

__version__ = "0.1.0"
