"""admission: admission control for ASGI services in one middleware.

Token-bucket rate limiting per client (in memory or shared through Redis), a concurrency
window, read/write/idle/deadline timeouts and a graceful drain. See README.md.
"""

from admission.config.policies import Policy
from admission.config.settings import Settings
from admission.errors import (
    AdmissionError,
    ConfigError,
    PolicyError,
    StorageError,
    StorageTimeout,
)
from admission.lifecycle.context import (
    deadline,
    draining,
    request_lifetime,
    service_lifetime,
    time_left,
)
from admission.lifetime import Lifetime
from admission.middleware import AdmissionMiddleware
from admission.ratelimit.decorator import limit
from admission.refusal import Refusal, refusal

__all__ = [
    "AdmissionError",
    "AdmissionMiddleware",
    "ConfigError",
    "Lifetime",
    "Policy",
    "PolicyError",
    "Refusal",
    "Settings",
    "StorageError",
    "StorageTimeout",
    "deadline",
    "draining",
    "limit",
    "refusal",
    "request_lifetime",
    "service_lifetime",
    "time_left",
]

__version__ = "0.1.0"
