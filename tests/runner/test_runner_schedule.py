"""The serving loop's scheduler (pure bookkeeping, no torch): budget, chunks, arrivals, limits."""

from __future__ import annotations

import itertools
import re

import pytest

from llm_perf_opt.errors import ConfigError
from llm_perf_opt.runner.schedule import Entry, Request, Scheduler, step_name

NAME = re.compile(r"^execute_context_(\d+)\((\d+)\)_generation_(\d+)\((\d+)\)$")


def run(requests: list[Request], budget: int, max_running: int | None) -> list[tuple[Entry, ...]]:
    return run_with(requests, budget, max_running)[0]


def run_with(
    requests: list[Request], budget: int, max_running: int | None
) -> tuple[list[tuple[Entry, ...]], Scheduler]:
    scheduler = Scheduler(requests, budget, max_running)
    steps = []
    while not scheduler.done:
        entries = scheduler.next_step()
        steps.append(entries)
        scheduler.finish_step(entries)
        assert len(steps) < 10_000
    return steps, scheduler


GRID = list(
    itertools.product(
        [(1, 5), (3, 282), (5, 17)],  # (requests, prompt length)
        [1, 8, 64, 512],  # token budget
        [None, 1, 2],  # max running
        [0, 1, 3],  # arrival every
        [1, 4],  # max new tokens
    )
)


@pytest.mark.parametrize(("shape", "budget", "max_running", "every", "new"), GRID)
def test_every_schedule_keeps_the_engine_invariants(
    shape: tuple[int, int], budget: int, max_running: int | None, every: int, new: int
) -> None:
    n, prompt = shape
    requests = [Request(i, prompt + i, i * every, new, None) for i in range(n)]
    steps, scheduler = run_with(requests, budget, max_running)
    done = dict.fromkeys(range(n), 0)
    produced = dict.fromkeys(range(n), 0)
    first_step: dict[int, int] = {}
    last_step: dict[int, int] = {}
    for index, entries in enumerate(steps):
        assert entries, "an engine never runs an empty step"
        assert sum(e.query_len for e in entries) <= budget
        assert len({e.request for e in entries}) == len(entries)
        for e in entries:
            req = requests[e.request]
            assert e.context_len == done[e.request]  # the tokens already in its cache
            first_step.setdefault(e.request, index)
            last_step[e.request] = index
            if done[e.request] < req.prompt_len:
                assert e.phase == "context"
                assert 1 <= e.query_len <= req.prompt_len - done[e.request]
            else:
                assert (e.phase, e.query_len) == ("generation", 1)
            done[e.request] += e.query_len
            if done[e.request] >= req.prompt_len:
                produced[e.request] += 1
    spans = {r: (first_step[r], last_step[r]) for r in first_step}
    if max_running is not None:
        for index in range(len(steps)):
            assert sum(a <= index <= b for a, b in spans.values()) <= max_running
    for i, req in enumerate(requests):
        assert produced[i] == new  # every request got its tokens
        assert done[i] == req.prompt_len + new - 1  # the prompt once, then one token a step
        arrived = scheduler.arrived[i].arrival_step
        assert arrived <= first_step[i]
        if arrived < req.arrival_step:  # pulled forward: only when nothing else was in flight
            assert all(not (a < arrived <= b) for r, (a, b) in spans.items() if r != i)


def test_chunked_prefill_and_mixed_steps_follow_vllm_policy() -> None:
    # Lp 282, budget 256, one arrival a step: the documented OCR capture schedule.
    requests = [Request(i, 282, i, 8, i) for i in range(4)]
    names = [step_name(entries) for entries in run(requests, 256, None)]
    assert names[:5] == [
        "execute_context_1(256)_generation_0(0)",
        "execute_context_2(256)_generation_0(0)",  # rest of request 0 + first chunk of 1
        "execute_context_2(255)_generation_1(1)",
        "execute_context_2(254)_generation_2(2)",
        "execute_context_1(107)_generation_3(3)",
    ]
    assert names[5:] == ["execute_context_0(0)_generation_4(4)"] * 4 + [
        "execute_context_0(0)_generation_3(3)",
        "execute_context_0(0)_generation_2(2)",
        "execute_context_0(0)_generation_1(1)",
    ]


def test_the_vision_encoder_runs_in_the_first_chunk_only() -> None:
    requests = [Request(0, 30, 0, 2, 0), Request(1, 30, 0, 2, None)]
    steps = run(requests, 8, None)
    images = [(e.request, e.context_len) for entries in steps for e in entries if e.encoder_images]
    assert images == [(0, 0)]


def test_step_names_carry_the_entry_sums() -> None:
    requests = [Request(i, 40 + 7 * i, 0, 5, None) for i in range(4)]
    for entries in run(requests, 48, 3):
        match = NAME.match(step_name(entries))
        assert match is not None
        ctx_reqs, ctx_tokens, gen_reqs, gen_tokens = map(int, match.groups())
        ctx = [e for e in entries if e.phase == "context"]
        gen = [e for e in entries if e.phase == "generation"]
        assert (ctx_reqs, ctx_tokens) == (len(ctx), sum(e.query_len for e in ctx))
        assert (gen_reqs, gen_tokens) == (len(gen), len(gen))


def test_an_idle_engine_pulls_the_next_arrival_forward() -> None:
    requests = [Request(0, 4, 0, 1, None), Request(1, 4, 10, 1, None)]
    scheduler = Scheduler(requests, 16, None)
    while not scheduler.done:
        scheduler.finish_step(scheduler.next_step())
    assert scheduler.step_index == 2
    assert [scheduler.arrived[i].arrival_step for i in (0, 1)] == [0, 1]


@pytest.mark.parametrize(("budget", "running"), [(0, None), (8, 0)])
def test_bad_limits_are_refused(budget: int, running: int | None) -> None:
    with pytest.raises(ConfigError):
        Scheduler([Request(0, 4, 0, 1)], budget, running)
