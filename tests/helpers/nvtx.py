"""A stand-in for the `nvtx` module's push/pop/mark that rebuilds the tree of ranges the runner
emits, so runner tests check the ranges without an NVTX collector."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The NVTX domain of the runner's ranges (docs/run-metadata.md).
DOMAIN = "llm_perf_opt"


@dataclass
class Node:
    """One NVTX push/pop range as the runner emitted it."""

    name: str
    payload: int | None
    children: list[Node] = field(default_factory=list)

    def names(self) -> list[str]:
        return [c.name for c in self.children]


class NvtxRecorder:
    """Stands in for nvtx.push_range/pop_range/mark and rebuilds the range tree."""

    def __init__(self) -> None:
        self.roots: list[Node] = []
        self.stack: list[Node] = []
        self.marks: list[str] = []
        self.domains: set[str | None] = set()
        self.events: list[str] = []

    def push_range(self, message: str, domain: str | None = None, payload: Any = None) -> None:
        self.domains.add(domain)
        self.events.append(f"push {message}")
        node = Node(message, payload)
        (self.stack[-1].children if self.stack else self.roots).append(node)
        self.stack.append(node)

    def pop_range(self, domain: str | None = None) -> None:
        self.domains.add(domain)
        self.events.append("pop")
        self.stack.pop()

    def mark(self, message: str, domain: str | None = None) -> None:
        self.domains.add(domain)
        self.events.append("mark")
        self.marks.append(message)
