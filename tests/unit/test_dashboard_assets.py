"""The dashboard's templates and assets: shipped in the wheel, and fit for a strict CSP."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "api" / "dashboard"


def test_every_template_and_asset_is_package_data():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["api.dashboard"]
    files = [
        p.relative_to(DASHBOARD).as_posix()
        for d in ("templates", "static")
        for p in (DASHBOARD / d).iterdir()
    ]
    assert files
    missing = [name for name in files if not any(fnmatch.fnmatch(name, pattern) for pattern in patterns)]
    assert missing == []


def test_htmx_is_vendored_with_its_licence():
    static = DASHBOARD / "static"
    assert (static / "htmx.min.js").stat().st_size > 10_000
    assert (static / "sse.js").stat().st_size > 1_000
    licences = (static / "LICENSES-vendored.txt").read_text()
    assert "htmx.org 2.0.11" in licences
    assert "Zero" in licences


def test_templates_hold_no_inline_script_style_or_event_handler():
    for template in (DASHBOARD / "templates").glob("*.html"):
        text = template.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), template.name
        assert not re.search(r"\sstyle=", text), template.name
        assert not re.search(r"\son[a-z]+=|hx-on", text), template.name
        assert "<style" not in text, template.name
