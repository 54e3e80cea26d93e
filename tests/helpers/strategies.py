"""Hypothesis strategies for hand-made traces."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

NAMES = ("stage", "lib", "step")


@st.composite
def nested_ranges(draw: st.DrawFn, tid: int, first_id: int) -> list[dict[str, Any]]:
    """A random forest of properly nested push/pop ranges on one thread."""
    out: list[dict[str, Any]] = []

    def grow(start: int, end: int, depth: int) -> None:
        cursor = start
        for _ in range(draw(st.integers(0, 3 if depth < 3 else 0))):
            if end - cursor < 6:
                return
            a = draw(st.integers(cursor + 1, end - 4))
            b = draw(st.integers(a + 2, end - 1))
            out.append({"id": first_id + len(out), "name": draw(st.sampled_from(NAMES)),
                        "start": a, "end": b, "tid": tid})  # fmt: skip
            grow(a, b, depth + 1)
            cursor = b

    grow(0, 10_000, 0)
    return out
