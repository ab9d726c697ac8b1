"""The event contract: the envelope, the typed payloads, the codec and the error taxonomy.

This package has no I/O and imports nothing else of agentstream, so producers in other
services can depend on it alone.
"""

from schemas.codec import decode, encode, encode_headers, header
from schemas.deadletter import DeadLetter, dead_letter_headers
from schemas.envelope import Envelope, Payload, derive_id, new_id, utcnow
from schemas.errors import (
    AgentstreamError,
    ConfigError,
    PermanentError,
    RetryableError,
    SchemaError,
    SkipEvent,
    ToolRejected,
    TopicMissing,
)
from schemas.events import (
    EVENT_TYPES,
    TERMINAL_STATUSES,
    AgentResponse,
    AgentResponseData,
    MemoryCall,
    ResponseStatus,
    ToolCall,
    ToolCallData,
    ToolResult,
    ToolResultData,
    Usage,
    UserRequest,
    UserRequestData,
)

__all__ = [
    "EVENT_TYPES",
    "TERMINAL_STATUSES",
    "AgentResponse",
    "AgentResponseData",
    "AgentstreamError",
    "ConfigError",
    "DeadLetter",
    "Envelope",
    "MemoryCall",
    "Payload",
    "PermanentError",
    "ResponseStatus",
    "RetryableError",
    "SchemaError",
    "SkipEvent",
    "ToolCall",
    "ToolCallData",
    "ToolRejected",
    "ToolResult",
    "ToolResultData",
    "TopicMissing",
    "Usage",
    "UserRequest",
    "UserRequestData",
    "dead_letter_headers",
    "decode",
    "derive_id",
    "encode",
    "encode_headers",
    "header",
    "new_id",
    "utcnow",
]
