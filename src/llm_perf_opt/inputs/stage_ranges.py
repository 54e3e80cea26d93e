"""Which NVTX ranges are the stages, and which of them belong to one image.

A role (`vocab.ROLES`: the three stages, `decode_step`, `image`) is an NVTX range name, in one
domain or in any (`RangeRef`); `--stage ROLE=NAME[@DOMAIN]` renames it. The stage ranges of one
image form an *instance*: those nested under the same `image` range (their nearest `image`
ancestor along `parent_id`), else, without an `image` range above them, the k-th range of each
stage in time order. A range with a `warmup…` range on its `path` belongs to a warmup round.
Decode steps are the `decode_step` ranges nested under a decode range. All of it is columnar over
the attribution's ranges frame: one step up the `parent_id` chain per nesting level.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from llm_perf_opt.attribution.nesting import nearest_ancestor
from llm_perf_opt.errors import AnalysisError, SelectionError
from llm_perf_opt.vocab import ROLES, STAGES, WARMUP_PREFIX


@dataclass(frozen=True)
class RangeRef:
    """An NVTX range by name, in one domain or (domain None) in any."""

    name: str
    domain: str | None = None

    @classmethod
    def parse(cls, text: str) -> RangeRef:
        """`NAME` or `NAME@DOMAIN` (an empty DOMAIN is the default domain)."""
        name, sep, domain = text.partition("@")
        if not name:
            raise SelectionError(f"empty range name in {text!r}; write NAME or NAME@DOMAIN")
        return cls(name, domain if sep else None)

    def expr(self) -> pl.Expr:
        """Boolean expression over a ranges frame."""
        match = pl.col("name") == self.name
        return match if self.domain is None else match & (pl.col("domain") == self.domain)

    def describe(self) -> str:
        if self.domain is None:
            return f"'{self.name}' (any domain)"
        return f"'{self.name}' in domain '{self.domain}'"


def parse_stage_option(text: str) -> tuple[str, RangeRef]:
    """Parse one `--stage ROLE=NAME[@DOMAIN]` value.

    Raises:
        SelectionError: malformed, or ROLE is not one of ROLES.
    """
    role, sep, rest = text.partition("=")
    if not sep or role not in ROLES:
        raise SelectionError(
            f"--stage {text!r}: expected ROLE=NAME[@DOMAIN] with ROLE one of {', '.join(ROLES)}"
        )
    return role, RangeRef.parse(rest)


def default_refs(domain: str | None) -> dict[str, RangeRef]:
    """The runner's range names, in `domain` (None: any domain)."""
    return {role: RangeRef(role, domain) for role in ROLES}


def stage_selection_refs(
    refs: Mapping[str, RangeRef], stages: Sequence[str] = STAGES
) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
    """Names and domains of the stage ranges, for `attribution.RangeSelection`."""
    names = tuple(dict.fromkeys(refs[s].name for s in stages))
    domains = [refs[s].domain for s in stages]
    if any(d is None for d in domains):
        return names, None
    return names, tuple(dict.fromkeys(d for d in domains if d is not None))


def names_present(ranges: pl.DataFrame, limit: int = 30) -> str:
    """The distinct range names (with domains) for error messages."""
    pairs = ranges.select("name", "domain").unique().sort("name", "domain").rows()
    shown = [f"{n}@{d}" if d else n for n, d in pairs[:limit]]
    more = f" … ({len(pairs) - limit} more)" if len(pairs) > limit else ""
    return ", ".join(shown) + more


def missing_stage_message(stage: str, ref: RangeRef, ranges: pl.DataFrame) -> str:
    """Why a stage has no range, and the flag that names it."""
    return (
        f"no NVTX range {ref.describe()} for stage {stage}; names present: "
        f"{names_present(ranges)}. Pass --stage {stage}=NAME[@DOMAIN]"
    )


@dataclass(frozen=True)
class Instance:
    """The stage ranges of one image: per stage, its row of the attribution's ranges frame."""

    warmup: bool
    image_index: int | None
    start_ns: int
    members: Mapping[str, Mapping[str, Any]]


def group_instances(
    ranges: pl.DataFrame,
    refs: Mapping[str, RangeRef],
    include_warmup: bool,
    stages: Sequence[str] = STAGES,
    warnings: list[str] | None = None,
) -> list[Instance]:
    """The image instances of `ranges` (`Attribution.ranges`), in time order; a line is added to
    `warnings` for each stage missing from some instances.

    Raises:
        SelectionError: a stage has no range (the message lists the names present), or every
            stage range is a warmup one.
        AnalysisError: one image range holds two ranges of one stage.
    """
    parts = []
    for order, stage in enumerate(stages):
        rows = ranges.filter(refs[stage].expr())
        if rows.is_empty():
            raise SelectionError(missing_stage_message(stage, refs[stage], ranges))
        parts.append(rows.with_columns(stage=pl.lit(stage), stage_order=pl.lit(order)))
    rows = pl.concat(parts).with_columns(
        warmup=pl.col("path").str.contains(f"(?:^|/){WARMUP_PREFIX}").fill_null(False)
    )
    if not include_warmup:
        rows = rows.filter(~pl.col("warmup"))
    if rows.is_empty():
        raise SelectionError(
            "every stage range lies under a warmup range; pass --include-warmup to analyze them"
        )
    images = ranges.filter(refs["image"].expr())
    rows = (
        rows.with_columns(image_id=nearest_ancestor(ranges, rows["parent_id"], images["range_id"]))
        .join(
            images.select(
                image_id="range_id", image_start_ns="cpu_start_ns", image_index="payload_int"
            ),
            on="image_id",
            how="left",
        )
        .sort("stage_order", "cpu_start_ns", "range_id")
        .with_columns(
            # without an image range, the k-th range of each stage is instance k
            key=pl.coalesce(
                pl.col("image_id"),
                -1 - pl.col("image_id").is_null().cum_sum().over("stage"),
            ),
        )
        .with_columns(
            seen=pl.int_range(pl.len()),
            nth=pl.int_range(pl.len()).over("key", "stage"),
        )
    )
    _refuse_two_per_image(rows)
    keys = (
        rows.group_by("key")
        .agg(
            pl.col("warmup").first(),
            pl.col("image_index").first(),
            pl.min_horizontal(pl.col("cpu_start_ns").min(), pl.col("image_start_ns").min()).alias(
                "start_ns"
            ),
            pl.col("seen").min(),
        )
        .sort("start_ns", "seen")
    )
    members: dict[int, dict[str, Mapping[str, Any]]] = {k: {} for k in keys["key"]}
    for row in rows.select("key", "stage", *ranges.columns).iter_rows(named=True):
        members[row.pop("key")][row.pop("stage")] = row
    for stage in stages:
        n = sum(stage in m for m in members.values())
        if n != len(members) and warnings is not None:
            warnings.append(f"{stage}: {n} range(s) for {len(members)} instance(s)")
    return [
        Instance(warmup, index, start, members[key])
        for key, warmup, index, start in keys.select(
            "key", "warmup", "image_index", "start_ns"
        ).iter_rows()
    ]


def _refuse_two_per_image(rows: pl.DataFrame) -> None:
    """Raise AnalysisError at the first second range of a stage under one image range."""
    second = rows.filter(pl.col("nth") == 1).head(1)
    if second.is_empty():
        return
    key, stage, again = second.select("key", "stage", "range_id").row(0)
    first = rows.filter(pl.col("key") == key, pl.col("stage") == stage, pl.col("nth") == 0)
    raise AnalysisError(
        f"two {stage} ranges inside one image range (ids {first['range_id'][0]} and {again}); "
        f"each image must hold one {stage} range"
    )


def decode_steps(
    ranges: pl.DataFrame, ref: RangeRef, instances: Sequence[Instance]
) -> dict[int, list[dict[str, Any]]]:
    """The `ref` ranges nested under each decode range of `instances` (by its range id), in
    time order."""
    decode_ids = [int(i.members["decode"]["range_id"]) for i in instances if "decode" in i.members]
    steps = ranges.filter(ref.expr())
    owner = nearest_ancestor(ranges, steps["parent_id"], pl.Series(decode_ids, dtype=pl.Int64))
    found: dict[int, list[dict[str, Any]]] = {int(rid): [] for rid in decode_ids}
    nested = steps.with_columns(owner=owner).filter(pl.col("owner").is_not_null())
    for row in nested.sort("cpu_start_ns", "range_id").iter_rows(named=True):
        found[row.pop("owner")].append(row)
    return found
