"""The Python SDK of the ImageIQ REST API (``/v1``): :class:`Client` and :class:`AsyncClient`.

It needs only httpx and pydantic (PIL when a PIL image is given), and imports nothing else
of this project, so an application that only calls the service installs no model code to
use it. See docs/sdk.md.

    from imageiq.client import Client

    with Client("http://127.0.0.1:3000", api_key=key) as client:
        answer = client.classify("cat.jpg", top_k=3)
        print(answer.top.label, answer.top.score)
"""

from imageiq.client.api_errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    ImageIQError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitedError,
    ServerError,
    ServiceUnavailableError,
    TransportError,
    UnsupportedMediaError,
)
from imageiq.client.async_client import AsyncClient
from imageiq.client.responses import (
    BatchItem,
    BatchResult,
    Categories,
    Classification,
    Deleted,
    ImageDetail,
    ImagePage,
    ItemError,
    Job,
    JobCreated,
    JobResultLine,
    Label,
    Models,
    ScoredLabel,
    Whoami,
)
from imageiq.client.sync_client import Client

__all__ = [
    "APIError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "BatchItem",
    "BatchResult",
    "Categories",
    "Classification",
    "Client",
    "ConflictError",
    "Deleted",
    "ImageDetail",
    "ImageIQError",
    "ImagePage",
    "InvalidRequestError",
    "ItemError",
    "Job",
    "JobCreated",
    "JobResultLine",
    "Label",
    "Models",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitedError",
    "ScoredLabel",
    "ServerError",
    "ServiceUnavailableError",
    "TransportError",
    "UnsupportedMediaError",
    "Whoami",
]
