"""The README stays the user's page and true to the code: its variant table, its size, its links."""

from __future__ import annotations

import re
from pathlib import Path

from effzoo.variants import VARIANTS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def variant_rows() -> dict[str, list[str]]:
    """The README's variant table: name -> its cells (idea, paper, causal LM, status)."""
    rows = {}
    for line in README.read_text().splitlines():
        match = re.match(r"\| `([a-z_]+)` \|(.*)\|$", line)
        if match:
            rows.setdefault(match.group(1), [cell.strip() for cell in match.group(2).split("|")])
    return rows


def test_the_variant_table_lists_every_registered_variant_and_marks_the_rest_planned():
    rows = variant_rows()
    registered = {name for name, cells in rows.items() if cells[-1] != "planned"}
    assert registered == set(VARIANTS), "README's variant table and effzoo/variants.py disagree"


def test_the_causal_column_says_which_variants_have_a_causal_lm():
    for name, cells in variant_rows().items():
        if name in VARIANTS:
            has_causal = "AutoModelForCausalLM" in VARIANTS[name].model_classes
            assert cells[2].startswith("✅") == has_causal, f"{name}: causal LM column says {cells[2]!r}"


def test_the_readme_is_under_20000_characters():
    assert len(README.read_text()) < 20_000


def test_every_relative_link_points_to_a_file_in_the_repository():
    broken = []
    for page in [README, *sorted((ROOT / "docs").rglob("*.md"))]:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, "\n".join(broken)


VARIANT_INDEX = ROOT / "docs" / "variants.md"
VARIANT_PAGES = ROOT / "docs" / "variants"
CITED_TEST = re.compile(r"`(tests/[\w/]+\.py)::(\w+)")


def test_every_registered_variant_has_a_linked_page_that_names_its_config_class():
    linked = set(LINK.findall(VARIANT_INDEX.read_text()))
    problems = []
    for name, variant in VARIANTS.items():
        page = VARIANT_PAGES / f"{name}.md"
        if not page.exists():
            problems.append(f"{name}: no docs/variants/{name}.md")
            continue
        if f"variants/{name}.md" not in linked:
            problems.append(f"{name}: docs/variants.md does not link variants/{name}.md")
        if f"`{variant.config_class.__name__}`" not in page.read_text():
            problems.append(f"{name}: its page does not name {variant.config_class.__name__}")
    assert not problems, "\n".join(problems)


def test_the_tests_a_variant_page_cites_exist():
    missing = []
    for page in sorted(VARIANT_PAGES.glob("*.md")):
        for path, name in CITED_TEST.findall(page.read_text()):
            test_file = ROOT / path
            if not test_file.exists() or not re.search(rf"^def {name}\(", test_file.read_text(), re.MULTILINE):
                missing.append(f"docs/variants/{page.name} -> {path}::{name}")
    assert not missing, "\n".join(missing)
