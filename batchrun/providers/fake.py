"""ScriptedProvider: a fake Provider for tests, answering from a function and recording its calls."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from batchrun.providers.seam import ChatRequest
from batchrun.records import Completion


@dataclass
class ScriptedProvider:
    """A fake Provider: `script(request)` returns a Completion or an exception
    (raised), and every request is recorded in `calls`.

    `request.options` carries the job's RequestOptions (stream, schema, tools)
    as the real provider gets them; a script may answer with any Completion
    field (tool_calls, finish_reason "length" or "content_filter", ttft_ms,
    usage_source) to drive the output checks without a server."""

    script: Callable[[ChatRequest], Completion | BaseException]
    calls: list[ChatRequest] = field(default_factory=list)
    cost_estimate: float | None = None  # what estimate_cost answers
    token_estimate: tuple[int, int] = (0, 0)  # what estimate_tokens answers

    async def complete(self, request: ChatRequest) -> Completion:
        self.calls.append(request)
        answer = self.script(request)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def estimate_cost(self, request: ChatRequest) -> float | None:
        return self.cost_estimate

    def estimate_tokens(self, request: ChatRequest) -> tuple[int, int]:
        return self.token_estimate

    async def cached(self, request: ChatRequest) -> Completion | None:
        return None  # no response cache

    async def remember(self, request: ChatRequest, completion: Completion) -> None:
        return None

    async def aclose(self) -> None:
        return None


if TYPE_CHECKING:  # mypy checks that the fake keeps to the seam (nothing runs here)
    from batchrun.providers.seam import Provider

    _: type[Provider] = ScriptedProvider
