"""The golden corpus of real kernel names (tests/data/kernel_names/names.csv, hand-checked
categories with their source): every name classifies to its category."""

from __future__ import annotations

import polars as pl

from llm_perf_opt.kernels.categories import CATEGORIES, classify_names
from tests.helpers.paths import DATA

CORPUS = DATA / "kernel_names" / "names.csv"


def test_corpus_classifies_exactly() -> None:
    corpus = pl.read_csv(CORPUS, schema_overrides={"name": pl.String, "category": pl.String})
    assert corpus.height >= 250
    assert set(corpus["category"]) <= set(CATEGORIES)
    names = corpus.select(pl.int_range(pl.len(), dtype=pl.Int32).alias("name_id"), "name")
    got = classify_names(names)["category"].cast(pl.String)
    wrong = corpus.with_columns(got=got).filter(pl.col("got") != pl.col("category"))
    assert wrong.is_empty(), wrong.select("name", "category", "got", "source").rows()
