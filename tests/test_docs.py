"""The README's configuration reference matches the settings model."""

from __future__ import annotations

from pathlib import Path

from tools.settings_doc import BEGIN, END, rows, section

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_settings_reference_is_current() -> None:
    text = README.read_text("utf-8")
    assert BEGIN in text
    assert END in text
    assert section() in text, "run: python -m tools.settings_doc --write"


def test_every_setting_has_a_meaning() -> None:
    missing = [env for env, _, meaning in rows() if not meaning]
    assert missing == []
