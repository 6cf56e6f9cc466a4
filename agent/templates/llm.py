"""LLM token usage: one event per provider response, read from objects (attributes or a pydantic
`model_dump()`) or dicts alike, without importing any provider SDK:

- OpenAI, Groq, OpenRouter: `usage.prompt_tokens`, `usage.completion_tokens`, `usage.total_tokens`,
  `id`, `model`.
- Anthropic (and the OpenAI Responses API): `usage.input_tokens`, `usage.output_tokens`, total =
  `usage.total_tokens` or their sum, `id`, `model`.
- Gemini: `usageMetadata.promptTokenCount`, output = `candidatesTokenCount + thoughtsTokenCount`,
  `totalTokenCount` (or the sum), `responseId`, `modelVersion`.

Gemini's snake_case spellings (google-genai) are read too. Anthropic's `cache_read_input_tokens` and
`cache_creation_input_tokens` become `cacheReadInputTokens`/`cacheCreationInputTokens` when non-zero.

Event id: `derive_event_id("llm", event_name, customer_id, response_id)`, so recording one response
twice (an app retrying its bookkeeping) stores it once. A response without an id needs `event_id=`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar, cast

import anyio.to_thread

from agent.outbox import EnqueueResult
from agent.templates._common import (
    Enqueuer,
    Metadata,
    TemplateError,
    build_event,
    count_failure,
    derive_event_id,
    log,
    read_field,
    safe_record,
)

T = TypeVar("T")
DEFAULT_EVENT_NAME = "llm.chat_completion"
# Attribute paths of the SDK calls that return one response with usage (OpenAI-compatible SDKs, the
# OpenAI Responses API, Anthropic, google-genai). A client passed to track_llm has these wrapped.
_CALLS = "chat.completions.create completions.create responses.create messages.create models.generate_content"
TRACKED_PATHS = tuple(tuple(call.split(".")) for call in _CALLS.split())

# Anthropic's input_tokens excludes prompt-cache reads and writes; they are billed apart.
_CACHE_FIELDS = (
    ("cacheReadInputTokens", "cache_read_input_tokens"),
    ("cacheCreationInputTokens", "cache_creation_input_tokens"),
)


class UsageNotFoundError(TemplateError):
    """The response carries no token usage that this module can read."""


@dataclass(frozen=True, slots=True)
class LlmUsage:
    """Token counts read from one response; `provider` is the shape recognised."""

    provider: str
    input_tokens: int
    output_tokens: int
    total_tokens: int
    model: str | None
    response_id: str | None
    extra: Mapping[str, int]


def _tokens(source: object, *names: str) -> int | None:
    value = read_field(source, *names)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageNotFoundError(f"usage field {names[0]} is {value!r}, not a token count")
    return value


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def extract_usage(response: object) -> LlmUsage:
    """Read token usage from a response object or dict (or from a bare usage object).

    Raises UsageNotFoundError naming the shapes looked for when none is present (e.g. a stream object:
    record its final chunk, which carries usage when the stream asked for it).
    """
    extra: dict[str, int] = {}
    gemini = read_field(response, "usageMetadata", "usage_metadata")
    usage = read_field(response, "usage")
    bare = (
        gemini is None and usage is None and read_field(response, "prompt_tokens", "input_tokens") is not None
    )
    usage = response if bare else usage
    if gemini is not None:
        provider = "gemini"
        given = _tokens(gemini, "promptTokenCount", "prompt_token_count")
        output = (_tokens(gemini, "candidatesTokenCount", "candidates_token_count") or 0) + (
            _tokens(gemini, "thoughtsTokenCount", "thoughts_token_count") or 0
        )
        total = _tokens(gemini, "totalTokenCount", "total_token_count")
        if given is None and total is None:
            raise UsageNotFoundError("usageMetadata has neither promptTokenCount nor totalTokenCount")
    elif usage is not None and read_field(usage, "prompt_tokens") is not None:
        provider = "openai"
        given, output = _tokens(usage, "prompt_tokens"), _tokens(usage, "completion_tokens") or 0
        total = _tokens(usage, "total_tokens")
    elif usage is not None and read_field(usage, "input_tokens") is not None:
        provider = "anthropic"
        given, output = _tokens(usage, "input_tokens"), _tokens(usage, "output_tokens") or 0
        total = _tokens(usage, "total_tokens")
        extra = {camel: n for camel, snake in _CACHE_FIELDS if (n := _tokens(usage, snake))}
    else:
        raise UsageNotFoundError(
            f"no token usage in this {type(response).__name__}: expected usage.prompt_tokens (OpenAI-"
            "style), usage.input_tokens (Anthropic) or usageMetadata (Gemini); for a stream, record its "
            "final chunk (OpenAI: stream_options={'include_usage': True})"
        )
    given = given or 0
    total = given + output if total is None else total
    # OpenAI-style and Anthropic: `model`, `id`; Gemini: `modelVersion`, `responseId` (or snake_case).
    model = None if bare else _text(read_field(response, "model", "modelVersion", "model_version"))
    response_id = None if bare else _text(read_field(response, "id", "responseId", "response_id"))
    return LlmUsage(provider, given, output, total, model, response_id, extra)


def llm_usage_event(
    response: object,
    *,
    customer_id: str,
    event_name: str = DEFAULT_EVENT_NAME,
    event_id: str | None = None,
    model: str | None = None,
    metadata: Metadata | None = None,
    timestamp: str | datetime | None = None,
) -> dict[str, Any]:
    """The event for one response: `inputTokens`, `outputTokens`, `totalTokens` (numbers), `model`.

    `model` overrides the response's model; `metadata` adds keys (never overriding those four).
    Raises UsageNotFoundError when the response has no usage, TemplateError when it has no id and no
    `event_id` was given (a random id would bill a retried recording twice).
    """
    usage = extract_usage(response)
    if event_id is None:
        if usage.response_id is None:
            raise TemplateError(
                f"this {usage.provider} response has no id to derive the event_id from; pass event_id= "
                "(e.g. your request id) so that recording it twice bills once"
            )
        event_id = derive_event_id("llm", event_name, customer_id, usage.response_id)
    values: dict[str, Any] = {"inputTokens": usage.input_tokens, "outputTokens": usage.output_tokens}
    values.update(totalTokens=usage.total_tokens, **usage.extra)
    chosen_model = model or usage.model
    if chosen_model:
        values["model"] = chosen_model
    return build_event(event_id, customer_id, event_name, values, metadata, timestamp)


def record_llm_usage(outbox: Enqueuer, response: object, **kwargs: Any) -> EnqueueResult:
    """Build with `llm_usage_event(response, **kwargs)` and enqueue it. Raises what either raises."""
    return outbox.enqueue(llm_usage_event(response, **kwargs))


@dataclass(frozen=True, slots=True)
class _Recorder:
    """Records each response a wrapped call returns; never raises into the caller."""

    outbox: Enqueuer
    customer_id: str | Callable[[], str]
    event_name: str
    metadata: Metadata | None

    def record(self, response: object) -> None:
        try:
            customer = self.customer_id() if callable(self.customer_id) else self.customer_id
            event = llm_usage_event(
                response, customer_id=customer, event_name=self.event_name, metadata=self.metadata
            )
        except Exception as exc:
            # The provider call succeeded and was paid for: failing it now would make the app retry it.
            count_failure("llm")
            log.warning("llm_usage_not_recorded", error=f"{type(exc).__name__}: {exc}")
            return
        safe_record(self.outbox, event, "llm")

    async def record_after(self, pending: Awaitable[T]) -> T:
        response = await pending
        # The SQLite commit blocks: keep it off the event loop.
        await anyio.to_thread.run_sync(self.record, response)
        return response

    def wrap(self, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            if inspect.isawaitable(result):
                return self.record_after(result)
            self.record(result)
            return result

        return call


class _TrackedClient:
    """A transparent proxy: the calls in TRACKED_PATHS are wrapped, everything else passes through."""

    def __init__(self, target: object, path: tuple[str, ...], recorder: _Recorder) -> None:
        self._target = target
        self._path = path
        self._recorder = recorder

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        path = (*self._path, name)
        if path in TRACKED_PATHS and callable(value):
            return self._recorder.wrap(value)
        if any(known[: len(path)] == path for known in TRACKED_PATHS):
            return _TrackedClient(value, path, self._recorder)
        return value


def track_llm(
    target: T,
    outbox: Enqueuer,
    *,
    customer_id: str | Callable[[], str],
    event_name: str = DEFAULT_EVENT_NAME,
    metadata: Metadata | None = None,
) -> T:
    """Record usage after each call of `target`: a client, or one of its methods.

    A client (OpenAI, Groq, OpenRouter via the OpenAI SDK, Anthropic, google-genai, sync or async) gets
    `chat.completions.create`, `completions.create`, `responses.create`, `messages.create` and
    `models.generate_content` wrapped; a callable is wrapped itself. `customer_id` is a string or a
    callable read at each call (e.g. from a contextvar). The response is returned unchanged. A response
    without usage, or an outbox that refuses, is logged and counted (`FAILURES["llm"]`), never raised.
    """
    recorder = _Recorder(outbox, customer_id, event_name, metadata)
    if any(getattr(target, path[0], None) is not None for path in TRACKED_PATHS):
        return cast(T, _TrackedClient(target, (), recorder))
    if callable(target):
        return cast(T, recorder.wrap(target))
    raise TypeError(f"track_llm needs an LLM client or a callable, got {type(target).__name__}")
