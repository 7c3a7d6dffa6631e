"""The README: its first two commands and the slow-tier command are what CI runs; its first screen
fits in 40 lines; every relative link in it and in docs/ points at an existing file and heading."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIRST_SCREEN_LINES = 40
#: docs that other changes are writing right now: a link to one passes while the file is absent,
#: and is checked like any other once it exists (then drop it from here)

def test_ci_runs_the_readme_commands():
    readme = (REPO / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1).strip().splitlines()
    install, test = first_block[0], first_block[1]
    assert install.startswith("pip install torch==2.13.0")
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert install in ci and test in ci
    assert ci.index(install) < ci.index(test)
    blocks = [b.strip() for b in re.findall(r"```bash\n(.*?)```", readme, re.S)]
    slow = f"{test} -m slow"  # the integration tier, in its own block (the Tests section)
    assert slow in blocks
    assert slow in ci and ci.index(test) < ci.index(slow)


def first_screen(readme: str) -> list[str]:
    """The README's lines up to the end of its table of contents (the next heading)."""
    lines = readme.splitlines()
    contents = lines.index("## Contents")
    end = next(i for i in range(contents + 1, len(lines)) if lines[i].startswith("#"))
    while not lines[end - 1].strip():
        end -= 1
    return lines[:end]


def test_first_screen_is_short_and_complete():
    readme = (REPO / "README.md").read_text()
    screen = first_screen(readme)
    assert len(screen) <= FIRST_SCREEN_LINES, (
        f"the README's first screen (down to the end of ## Contents) is {len(screen)} lines, "
        f"more than {FIRST_SCREEN_LINES}")
    text = "\n".join(screen)
    assert "Zhang et al." in text and "leaderboard/README.md" in text
    assert "pip install torch==2.13.0" in text and "python -m pytest -q" in text
    assert "muse-quant demo" in text
    contents = text[text.index("## Contents"):]
    assert len(re.findall(r"\]\(#", contents)) >= 10  # the table of contents links the sections


def test_first_screen_counts_to_the_end_of_the_contents():
    readme = "# t\n\nintro\n\n## Contents\n\n* [a](#a)\n* [b](#b)\n\n## A\n\ntext\n"
    assert first_screen(readme) == ["# t", "", "intro", "", "## Contents", "", "* [a](#a)",
                                    "* [b](#b)"]


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    found = set()
    for line in text.splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            base = candidate = slug(m.group(1))
            n = 0
            while candidate in found:  # GitHub numbers repeated headings: a, a-1, a-2
                n += 1
                candidate = f"{base}-{n}"
            found.add(candidate)
    return found


def test_slug_and_anchors(tmp_path):
    assert slug("The verdict: `muse-quant compare`") == "the-verdict-muse-quant-compare"
    assert slug("`muse_quant` model arguments") == "muse_quant-model-arguments"
    assert slug("`gguf:TYPE` (llama.cpp)") == "gguftype-llamacpp"
    doc = tmp_path / "d.md"
    doc.write_text("# A b\n```\n# not a heading\n```\n## A b\n")
    assert anchors(doc) == {"a-b", "a-b-1"}


def links(path: Path) -> list[str]:
    """Relative link targets (images included) outside code blocks and inline code."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)
    return [t for t in targets if not re.match(r"[a-z]+:", t)]


def broken_links(doc: Path, repo: Path = REPO) -> list[str]:
    broken = []
    for target in links(doc):
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        rel = dest.relative_to(repo).as_posix() if dest.is_relative_to(repo) else str(dest)
        if not dest.exists():
            broken.append(f"{target} (no file {rel})")
            continue
        # headings are checked in the hand-written docs; generated pages use their own ids
        checked = dest.suffix == ".md" and (dest.parent == repo / "docs" or rel in (
            "README.md", "CONTRIBUTING.md"))
        if anchor and checked and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {rel})")
    return broken


def test_relative_links_point_at_existing_files_and_headings():
    docs = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = {d.relative_to(REPO).as_posix(): broken_links(d) for d in docs}
    assert not {d: b for d, b in broken.items() if b}, broken


def test_a_broken_link_is_found(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Top\n")
    readme = tmp_path / "README.md"
    readme.write_text("[ok](docs/a.md#top) [gone](docs/b.md) [bad](docs/a.md#nope) "
                      "[self](#top) [web](https://x.org/y) `[code](nowhere.md)`\n# Top\n")
    assert broken_links(readme, tmp_path) == ["docs/b.md (no file docs/b.md)",
                                    "docs/a.md#nope (no heading #nope in docs/a.md)"]
