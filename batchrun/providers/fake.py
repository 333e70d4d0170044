"""ScriptedProvider: a fake Provider for tests, answering from a function and recording its calls."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from batchrun.providers.seam import ChatRequest, CostBound
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
    cost_estimate: float | None = None  # what cost_bound answers (its usd), at any prompt_factor
    token_estimate: tuple[int, int] = (0, 0)  # what estimate_tokens answers

    async def complete(self, request: ChatRequest) -> Completion:
        self.calls.append(request)
        answer = self.script(request)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def cost_bound(self, request: ChatRequest, prompt_factor: float = 1.0) -> CostBound | None:
        if self.cost_estimate is None:
            return None
        return CostBound(self.cost_estimate, self.token_estimate[0], self.token_estimate[1])

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
