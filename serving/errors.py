"""Domain errors of the serving layer, in one place.

The CLI turns them into one-line messages; the gateway turns them into OpenAI-shaped JSON
(`{"error": {"message", "type", "code"}}`) with the status carried by each class.
"""
from __future__ import annotations


class ServingError(Exception):
    """Base class. `status`/`type`/`code` say how the gateway reports it."""

    status = 500
    type = "server_error"
    code = "internal_error"

    def to_dict(self) -> dict:
        return {"error": {"message": str(self), "type": self.type, "code": self.code}}


class RegistryError(ServingError):
    """The adapter registry cannot do what was asked (unknown tenant or version, bad name)."""

    status = 400
    type = "invalid_request_error"
    code = "registry_error"


class AdapterValidationError(RegistryError):
    """An adapter directory is missing, corrupt, or does not fit the base model / engine limits."""

    code = "invalid_adapter"


class TenantError(ServingError):
    """Tenant bookkeeping failed (duplicate or unknown tenant, bad name)."""

    status = 400
    type = "invalid_request_error"
    code = "tenant_error"


class BadRequest(ServingError):
    """A request body the gateway cannot forward."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class AuthError(ServingError):
    """Missing or wrong API key."""

    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class ModelNotFound(ServingError):
    """The requested model is not the caller's (we do not say whether it exists)."""

    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class EngineUnavailable(ServingError):
    """The vLLM engine is starting, restarting or unreachable: retry later."""

    status = 503
    type = "server_error"
    code = "engine_unavailable"

    def __init__(self, message: str = "the inference engine is unavailable", retry_after: int = 5):
        super().__init__(message)
        self.retry_after = retry_after


class EngineError(ServingError):
    """The vLLM process could not be started or an adapter could not be loaded into it."""

    status = 502
    type = "server_error"
    code = "engine_error"


class TooLarge(ServingError):
    """A request body over the server's size limit."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(ServingError):
    """Too many requests or tokens for one tenant: retry after `retry_after` s."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after
