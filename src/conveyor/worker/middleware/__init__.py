"""Cross-cutting worker features, one module per concern."""

from conveyor.worker.middleware.base import Execution, Middleware, default_middleware
from conveyor.worker.middleware.failure_logs import FailureLogs
from conveyor.worker.middleware.results import Results
from conveyor.worker.middleware.retries import Retries
from conveyor.worker.middleware.time_limits import TimeLimitExceeded, TimeLimits

__all__ = [
    "Execution",
    "FailureLogs",
    "Middleware",
    "Results",
    "Retries",
    "TimeLimitExceeded",
    "TimeLimits",
    "default_middleware",
]
