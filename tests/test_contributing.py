"""The docs speak of the software: CONTRIBUTING.md's map names every module of the package in its folder's entry
(and nothing that is not there), and README.md, CONTRIBUTING.md and docs/*.md say nothing of how the work was
done (issue numbers, sessions, who measured)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers.doc_blocks import ROOT, doc_files

PACKAGE = ROOT / "freezeout"
# A map entry: an indented line opening with a folder of the package, then what it holds, on as many lines as it takes.
ENTRY = re.compile(r"^ {4}(freezeout/(?:\w+/)*)(?=\s)", re.M)


def map_entries(text: str) -> dict[str, str]:
    """Each folder named in the map (``freezeout/freezing/``) and the text of its entry, up to the next entry or the
    end of the indented block."""
    starts = list(ENTRY.finditer(text))
    entries = {}
    for i, m in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        block = text[m.end() : end]
        first = block.find("\n") + 1 if "\n" in block else len(block)  # the entry's own line, then those after it
        stop = re.compile(r"^(?! {4})", re.M).search(block, first)  # a line out of the indented block ends the map
        entries[m.group(1)] = block[: stop.start()] if stop else block
    return entries


def package_folders() -> dict[str, list[str]]:
    """Every folder of the package holding modules, as the map names it, with its modules."""
    folders: dict[str, list[str]] = {}
    for module in sorted(PACKAGE.rglob("*.py")):
        if "__pycache__" in module.parts:
            continue
        folder = module.parent.relative_to(ROOT).as_posix() + "/"
        folders.setdefault(folder, []).append(module.name)
    return folders


def map_problems(text: str, folders: dict[str, list[str]]) -> list[str]:
    """Where the map in ``text`` and the package's ``folders`` disagree: a folder without its entry or an entry
    without its folder, a module its folder's entry leaves out, a module named that is not there."""
    entries = map_entries(text)
    problems = [f"no entry for {f}" for f in folders if f not in entries]
    problems += [f"an entry for {f}, which holds no module" for f in entries if f not in folders]
    for folder, modules in folders.items():
        named = set(re.findall(r"(?<![\w/.])(\w+\.py)\b", entries.get(folder, "")))
        problems += [f"{folder}{m} is not in its entry" for m in sorted(set(modules) - named)]
        problems += [f"{folder}{m} is named but not there" for m in sorted(named - set(modules))]
    return problems


def test_the_map_names_every_module_in_its_folders_entry_and_only_modules_that_exist():
    assert map_problems((ROOT / "CONTRIBUTING.md").read_text(), package_folders()) == []


def test_the_map_check_sees_a_missing_module_and_a_stale_one():
    text = (
        "Map:\n\n    freezeout/      a.py (the facade), b.py\n                    c.py\n    freezeout/x/   d.py\n\nEnd"
    )
    assert map_entries(text) == {
        "freezeout/": "      a.py (the facade), b.py\n                    c.py\n",
        "freezeout/x/": "   d.py\n",
    }
    assert map_problems(text, {"freezeout/": ["a.py", "b.py", "c.py"], "freezeout/x/": ["d.py"]}) == []
    assert map_problems(
        text, {"freezeout/": ["a.py", "b.py"], "freezeout/x/": ["d.py", "e.py"], "freezeout/y/": []}
    ) == [
        "no entry for freezeout/y/",
        "freezeout/c.py is named but not there",
        "freezeout/x/e.py is not in its entry",
    ]


# How the work was done is no part of the software's docs: a reader can follow none of it.
WORK_NOTES = [
    r"\b[Ii]ssues? ?#?\d+",  # "issue 24", "issue #16"
    r"\b[Tt]he issue\b",
    r"\bitem \d+ of\b",
    r"\b(this|that|a) session\b",
    r"\b(was|were|is|been) lent\b",
    r"\banother engineer",
    r"\bengineers?\b",
    r"\bwho measured\b",
    r"\bthis project's (machine|machines|CPU)\b",
]


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_the_docs_say_nothing_of_how_the_work_was_done(path: Path):
    text = path.read_text()
    found = [(p, m.group(0)) for p in WORK_NOTES for m in re.finditer(p, text)]
    assert not found, f"{path.name}: {found}"


def test_the_work_notes_check_sees_each_kind():
    notes = "issue 24; Issue #7; the issue expected; item 4 of the issue; in this session; no GPU was lent; another " \
            "engineer's tests; who measured; this project's CPU"  # fmt: skip
    hits = {p for p in WORK_NOTES if re.search(p, notes)}
    assert hits == set(WORK_NOTES)
    assert not any(re.search(p, "session.py holds a run's epochs; reissue 3 files") for p in WORK_NOTES)
