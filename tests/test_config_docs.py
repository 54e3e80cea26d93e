"""docs/configuration.md is what scripts/gen_config_docs.py makes from the CLIs' own options."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import pytest

from tests.helpers.paths import REPO


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    """scripts/gen_config_docs.py, imported from its path (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "gen_config_docs", REPO / "scripts" / "gen_config_docs.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_committed_configuration_md_is_the_generated_one(gen: ModuleType) -> None:
    page = gen.render(gen.TEMPLATE.read_text(encoding="utf-8"))
    committed = gen.TARGET.read_text(encoding="utf-8")
    assert committed == page, (
        "docs/configuration.md differs from what the CLIs' options and "
        "scripts/configuration.template.md give: run `python scripts/gen_config_docs.py`"
    )


def test_every_option_must_be_placed_in_a_table(gen: ModuleType) -> None:
    template = gen.TEMPLATE.read_text(encoding="utf-8").replace(" --other-threads}}", "}}")
    with pytest.raises(SystemExit, match="options in no table: mfu-analyze --other-threads"):
        gen.render(template)


def test_a_table_row_comes_from_the_option_object(gen: ModuleType) -> None:
    page = gen.render(gen.TEMPLATE.read_text(encoding="utf-8"))
    row = "| `--top-kernels N` | `10` | Kernel names listed per stage. (0 ≤ N ≤ 10,000) |"
    assert row in page.splitlines()
