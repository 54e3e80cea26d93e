"""Every vendored fixture folder says where its files came from (GPU, nsys version, command)."""

from __future__ import annotations

from tests.helpers.paths import DATA


def test_every_fixture_folder_has_a_readme() -> None:
    folders = sorted(p for p in DATA.iterdir() if p.is_dir())
    assert folders
    missing = [p.name for p in folders if not (p / "README.md").is_file()]
    assert missing == [], f"tests/data folders without a README.md: {missing}"
