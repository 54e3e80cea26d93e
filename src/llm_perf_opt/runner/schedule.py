"""The serving loop's scheduler: which requests run how many tokens in each engine step.

Pure bookkeeping (no torch), modelled on vLLM V1's scheduler with chunked prefill:
- a request *arrives* (joins the waiting queue) at its `arrival_step`; when nothing runs and
  nothing waits, the next arrival is pulled forward to the current step (an engine does not
  run empty steps), and the step it really arrived at is what is recorded;
- each step has `token_budget` tokens. Running requests are served first, in admission order:
  one token for a request in generation, min(rest of its prompt, budget left) for one still in
  its prompt (a chunk); then waiting requests are admitted first come first served while the
  budget lasts and fewer than `max_running` run, each with its first chunk;
- a request is *context* while its prompt is not finished (the step that finishes it included,
  and that step samples its first token), *generation* afterwards (one token a step); it leaves
  when it has `max_new_tokens` tokens.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace

from llm_perf_opt.errors import ConfigError
from llm_perf_opt.vocab import VLLM_STEP_NAME, ServePhase


@dataclass(frozen=True)
class Request:
    """One request: a prompt of `prompt_len` tokens (an OCR page's, or random text)."""

    id: int
    prompt_len: int
    arrival_step: int
    max_new_tokens: int
    image_index: int | None = None


@dataclass(frozen=True)
class Entry:
    """One request's share of a step.

    Attributes:
        request: the request id.
        phase: "context" (a prompt chunk) or "generation" (one new token).
        query_len: tokens the request runs in this step.
        context_len: tokens already in its KV cache before the step (the keys its last query
            token attends to are context_len + query_len).
        encoder_images: images whose vision encoder runs in this step for the request.
    """

    request: int
    phase: ServePhase
    query_len: int
    context_len: int
    encoder_images: int = 0


def step_name(entries: tuple[Entry, ...]) -> str:
    """The step's range name in vLLM V1's format (`compute_iteration_details`, vllm/v1/utils.py):
    `execute_context_{requests}({tokens})_generation_{requests}({tokens})`."""
    ctx = [e.query_len for e in entries if e.phase == "context"]
    gen = [e.query_len for e in entries if e.phase == "generation"]
    return VLLM_STEP_NAME.format(
        ctx_reqs=len(ctx), ctx_tokens=sum(ctx), gen_reqs=len(gen), gen_tokens=sum(gen)
    )


@dataclass
class _State:
    request: Request
    computed: int = 0
    generated: int = 0


class Scheduler:
    """Plans steps over a fixed list of requests (see the module docstring for the policy)."""

    def __init__(self, requests: list[Request], token_budget: int, max_running: int | None) -> None:
        """Raises ConfigError on a non-positive budget or max_running."""
        if token_budget < 1:
            raise ConfigError(f"token budget must be ≥ 1, got {token_budget}")
        if max_running is not None and max_running < 1:
            raise ConfigError(f"max running requests must be ≥ 1, got {max_running}")
        self.token_budget = token_budget
        self.max_running = max_running
        self.step_index = 0
        self._pending = deque(sorted(requests, key=lambda r: (r.arrival_step, r.id)))
        self._waiting: deque[_State] = deque()
        self._running: list[_State] = []
        self.arrived: dict[int, Request] = {}
        self.generated: dict[int, int] = {}

    @property
    def done(self) -> bool:
        """Every request has arrived and finished."""
        return not (self._pending or self._waiting or self._running)

    def next_step(self) -> tuple[Entry, ...]:
        """The entries of the next step (call `finish_step` with them after running it).

        Raises:
            RuntimeError: called when `done`.
        """
        if self.done:
            raise RuntimeError("no request left to schedule")
        self._admit_arrivals()
        budget = self.token_budget
        entries: list[Entry] = []
        for state in self._running:
            if budget == 0:
                break
            entry = self._entry(state, budget)
            budget -= entry.query_len
            entries.append(entry)
        while budget and self._waiting and not self._full():
            state = self._waiting.popleft()
            self._running.append(state)
            entry = self._entry(state, budget)
            budget -= entry.query_len
            entries.append(entry)
        return tuple(entries)

    def finish_step(self, entries: tuple[Entry, ...]) -> None:
        """Advance every scheduled request by its tokens; retire finished ones."""
        by_id = {s.request.id: s for s in self._running}
        for entry in entries:
            state = by_id[entry.request]
            state.computed += entry.query_len
            if state.computed >= state.request.prompt_len:
                state.generated += 1
        finished = [s for s in self._running if s.generated >= s.request.max_new_tokens]
        for state in finished:
            self.generated[state.request.id] = state.generated
            self._running.remove(state)
        self.step_index += 1

    def _full(self) -> bool:
        return self.max_running is not None and len(self._running) >= self.max_running

    def _admit_arrivals(self) -> None:
        if not (self._running or self._waiting) and self._pending:
            first = self._pending[0]
            if first.arrival_step > self.step_index:  # idle engine: the next arrival comes now
                self._pending[0] = replace(first, arrival_step=self.step_index)
        while self._pending and self._pending[0].arrival_step <= self.step_index:
            request = self._pending.popleft()
            self.arrived[request.id] = request
            self._waiting.append(_State(request))

    @staticmethod
    def _entry(state: _State, budget: int) -> Entry:
        request = state.request
        rest = request.prompt_len - state.computed
        if rest > 0:
            images = 1 if state.computed == 0 and request.image_index is not None else 0
            return Entry(request.id, "context", min(rest, budget), state.computed, images)
        return Entry(request.id, "generation", 1, state.computed)
