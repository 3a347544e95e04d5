"""What the README and docs/ promise about names and links: every exception
they name can be imported from ``conveyor``, and every link to a file
resolves inside the repository (a user's checkout has no ``../shared``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import conveyor

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BUILTIN = {"IOError", "OSError", "ValueError", "KeyError", "TimeoutError", "Exception"}
# Class-like words ending the way this project's exceptions do.
EXCEPTION_NAME = re.compile(
    r"\b[A-Z][A-Za-z]*(?:Error|Exceeded|Lost|Failed|Full|NotFound|Exists|Timeout|Locked"
    r"|Closed|Unauthorized|TooLarge|Unreachable)\b"
)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_the_documents_exist() -> None:
    assert (ROOT / "docs" / "security.md") in DOCUMENTS


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_exception_the_docs_name_is_importable_from_conveyor(document: Path) -> None:
    names = set(EXCEPTION_NAME.findall(document.read_text())) - BUILTIN
    missing = sorted(n for n in names if not isinstance(getattr(conveyor, n, None), type))
    assert missing == [], f"{document.name} names exceptions conveyor does not export"
    for name in names:
        assert issubclass(getattr(conveyor, name), BaseException), name
        assert name in conveyor.__all__, name


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_link_resolves_inside_the_repository(document: Path) -> None:
    broken = []
    for target in LINK.findall(document.read_text()):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue  # a web address, or a heading of the same page
        path = (document.parent / target.split("#")[0]).resolve()
        if not path.is_relative_to(ROOT) or not path.exists():
            broken.append(target)
    assert broken == []
    assert "../shared" not in document.read_text()
