"""LICENSE, CITATION.cff and CHANGELOG.md: present, consistent with pyproject, parseable."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# one arXiv id per family the zoo implements (Swin, NAT, DiNAT, BiFormer, EfficientViT (MSRA),
# SHViT, MetaFormer/PoolFormer, MetaFormer baselines, SpectFormer, CrossViT, EViT, DeiT)
FAMILY_PAPERS = {"2103.14030", "2204.07143", "2209.15001", "2303.08810", "2305.07027",
                 "2401.16456", "2111.11418", "2210.13452", "2304.06446", "2103.14899",
                 "2202.07800", "2012.12877"}


def _pyproject_field(name: str) -> str:
    match = re.search(rf'^{name}\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert match, name
    return match.group(1)


def test_license_is_the_apache_2_text_pyproject_names():
    text = (ROOT / "LICENSE").read_text()
    assert _pyproject_field("license") == "Apache-2.0"
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) > 150


def test_citation_cff_parses_with_the_expected_keys():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    for key in ("cff-version", "message", "title", "authors", "version", "license",
                "references"):
        assert cff.get(key), key
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert str(cff["version"]) == _pyproject_field("version")
    assert cff["license"] == _pyproject_field("license")
    ids = set()
    for ref in cff["references"]:
        assert ref["type"] in ("article", "conference-paper") and ref["title"]
        assert ref["authors"] and all(a.get("family-names") for a in ref["authors"])
        assert isinstance(ref["year"], int)
        ids.add(ref["doi"].rsplit("arXiv.", 1)[-1])
    assert ids == FAMILY_PAPERS


def test_changelog_has_unreleased_and_the_current_version():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in text
    assert f"## [{_pyproject_field('version')}]" in text
