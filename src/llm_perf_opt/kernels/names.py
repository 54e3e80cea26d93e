"""Short, distinct kernel names for the tables a person reads (the full name stays in JSON, CSV
and the results database).

A demangled C++ kernel name is mostly template noise: `void at::native::elementwise_kernel<(int)128,
(int)4, void at::native::gpu_kernel_impl_nocast<at::native::CUDAFunctor_add<c10::BFloat16>>(…)…`.
The short name keeps the kernel's own name, the functor or op that tells instances of one
template apart and the element type: `elementwise_kernel · add (bf16)`. Names without templates
(`nvjet_…`, `triton_…`) stay as they are. Within one table, names that trim to the same text are
numbered.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

# the op inside a template: a functor, a `*_kernel_cuda` / `*_kernel_impl` / `*_kernel` function
_OP: Final = re.compile(
    r"CUDAFunctor(?:OnSelf|OnOther)?_(\w+)|(\w+?)Functor\b|(\w+?)CUDAKernelImpl\b|(\w+?)_kernel_cuda\b|"
    r"(\w+?)_kernel_impl\w*|(\w+?)_kernel\b"
)
# wrappers that say nothing about the op
_GENERIC: Final = frozenset(
    {"binary", "aunary", "bunary", "unary", "gpu", "gpu_kernel", "elementwise", "vectorized",
     "unrolled", "index", "gpu_index", "compare", "launch", ""}
)  # fmt: skip
_DTYPES: Final = (
    ("bfloat16", "bf16"),
    ("half", "fp16"),
    ("__nv_fp8", "fp8"),
    ("double", "f64"),
    ("float", "f32"),
    ("long", "i64"),
    ("unsigned char", "u8"),
    ("bool", "bool"),
    ("int", "i32"),
)
_WIDTH: Final = 72
# template value arguments as nsys spells them: `(int)128`, `(bool)0`, `(unsigned long)1`
_CASTS: Final = re.compile(r"\([a-z_ ]+\)-?\d+")


def short_name(name: str) -> str:
    """The kernel's own name, the op of its template arguments and their first element type."""
    text = name.removeprefix("void ").replace("<unnamed>", "anon")
    text = text.replace("(anonymous namespace)", "anon")
    lt, paren = text.find("<"), text.find("(")
    if lt < 0 and paren < 0:
        return _fit(text)
    templated = lt > 0 and (paren < 0 or lt < paren)
    head = text[: lt if templated else paren]
    base = head.rsplit("::", 1)[-1]
    args = _CASTS.sub("", text[lt + 1 : _closing(text, lt)]) if templated else ""
    op = next(
        (
            g.lower()
            for m in _OP.finditer(args)
            for g in m.groups()
            if g is not None and g.lower() not in _GENERIC and g.lower() != base.lower()
        ),
        None,
    )
    lowered = args.lower()
    found = [(m.start(), short) for word, short in _DTYPES
             for m in [re.search(rf"\b{word}\b", lowered)] if m]  # fmt: skip
    dtype = min(found)[1] if found else None
    return _fit(base + (f" · {op}" if op else "") + (f" ({dtype})" if dtype else ""))


def _closing(text: str, lt: int) -> int:
    """Index of the `>` closing the `<` at `lt` (the end of the text when unbalanced)."""
    depth = 0
    for i in range(lt, len(text)):
        depth += {"<": 1, ">": -1}.get(text[i], 0)
        if depth == 0:
            return i
    return len(text)


def _fit(text: str, width: int = _WIDTH) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def short_names(names: Sequence[str]) -> list[str]:
    """`short_name` of each, numbered where two different names trim to the same text."""
    shorts = [short_name(n) for n in names]
    seen: dict[str, list[str]] = {}  # short text → the full names trimmed to it, in order
    for s, n in zip(shorts, names, strict=True):
        if n not in seen.setdefault(s, []):
            seen[s].append(n)
    out = []
    for s, n in zip(shorts, names, strict=True):
        suffix = "" if len(seen[s]) == 1 else f" [{seen[s].index(n) + 1}]"
        out.append(_fit(s, _WIDTH - len(suffix)) + suffix)
    return out
