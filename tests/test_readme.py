"""The README and docs/: examples run as printed, commands parse, links resolve, and CI's
command is the README's."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = {
    path.relative_to(REPO).as_posix(): path.read_text() for path in [REPO / "README.md", *DOCS]
}
PACKAGES = ("benchmark", "methods", "datasets", "foundation")
CODE = sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))


def fenced(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_the_readme_keeps_what_the_developers_guide_asks():
    headings = set(re.findall(r"^## (.+)$", README, flags=re.M))
    assert {"Set up", "Results", "Real data", "Adding a method", "Scaling out"} <= headings
    scaling = README.split("## Scaling out", 1)[1].split("\n## ", 1)[0]
    assert "torchrun" in scaling and "SLURM" in scaling
    setup = README.split("## Set up", 1)[1].split("\n## ", 1)[0]
    assert "python -m pip install -e . && python -m benchmark run --dataset synthetic_pet" in setup
    assert "python -m benchmark run --methods all --dataset synthetic --seeds 3" in setup
    results = README.split("## Results", 1)[1].split("\n## ", 1)[0]
    assert "leaderboards/synthetic.md" in results and "\n| Method " in results
    assert len(README.splitlines()) < 300, "the README links to docs/ for the rest"
    linked = set(re.findall(r"\]\(docs/([\w.-]+\.md)", README))
    assert linked == {path.name for path in DOCS}, "every page of docs/ is linked from the README"


def test_python_examples_run():
    blocks = {code for text in PAGES.values() for code in fenced(text, "python")}
    assert any(code in fenced(README, "python") for code in blocks), "the README shows none"
    for code in sorted(blocks):
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr
        if "torch.Size([24, 32, 32])" in code:
            assert result.stdout.strip() == "torch.Size([24, 32, 32])"


def test_ci_runs_the_readme_test_command():
    marker = README.split("<!-- test-command -->", 1)[1]
    command = re.search(r"```bash\n(.*?)\n```", marker, flags=re.S).group(1)
    assert "pytest" in command
    ci = (REPO / ".ci" / "run").read_text()
    assert "test-command" in ci and "README.md" in ci


def test_yaml_examples_are_settings_files(tmp_path):
    from benchmark.config import load_settings

    blocks = fenced((REPO / "docs" / "settings.md").read_text(), "yaml")
    assert blocks, "docs/settings.md shows no settings file"
    for code in blocks:
        path = tmp_path / "settings.yaml"
        path.write_text(code)
        settings = load_settings(path, [])
        assert settings["train"] and settings["run"] and settings["tomography"]


# --- every `python -m benchmark ...` shown parses --------------------------------------------

# Placeholders of the synopses, and the shell variables of the SLURM examples.
PLACEHOLDERS = {
    "NAME": "synthetic",
    "PATH": "/data",
    "DIR": "heatmaps/",
    "FILE": "settings.yaml",
    "PATTERN": "*",
    "N": "2",
    "V": "1",
    "KEY": "n_val",
    "FIELD": "iterations",
    "SPEC": "tonno",
    "${SLURM_ARRAY_TASK_ID}": "1",
}


def synopsis_to_argv(text: str) -> list[str]:
    """`--preset quick\\|paper [--set K=V] ...` -> a command line: brackets dropped (their
    options kept), the first of each a|b, `...` (the options shown elsewhere) a dataset,
    placeholders replaced by examples."""
    text = text.replace("\\|", "|").replace("[", " ").replace("]", " ")
    argv = []
    for word in shlex.split(text):
        if word == "...":  # the options of the run it extends: the one it needs
            argv += [] if "--dataset" in text else ["--dataset", "synthetic"]
            continue
        word = word.split("|")[0] if "|" in word and not word.startswith("*") else word
        for name, value in PLACEHOLDERS.items():
            word = re.sub(rf"(?<![\w$]){re.escape(name)}(?!\w)", value, word)
        argv.append(word)
    return argv


def shown_commands() -> list[tuple[str, str]]:
    """(page, the words after `-m benchmark`) of every command in a page: inline code spans
    and shell blocks (continuations joined, `&&` chains and `--wrap '...'` opened, comments
    dropped); `torchrun ... -m benchmark` counts, other shell lines do not."""
    found = []
    for page, text in PAGES.items():
        for span in re.findall(r"(?<!`)`([^`]*-m benchmark\b[^`]*)`(?!`)", text):
            found.append((page, " ".join(span.split())))
        for block in fenced(text, "bash"):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" # ", 1)[0]
                for part in re.split(r"&&|'", line):
                    if "-m benchmark" in part:
                        found.append((page, " ".join(part.split())))
    return [(page, cmd.split("-m benchmark", 1)[1].strip()) for page, cmd in found]


COMMANDS = shown_commands()


def parses(words: str) -> str | None:
    """None if the CLI's parser takes ``words``, else argparse's message."""
    import contextlib
    import io

    from benchmark.cli import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(synopsis_to_argv(words))
    except SystemExit as stop:
        return f"exit {stop.code}: {err.getvalue().strip()}"
    return None


def test_the_docs_show_the_commands_they_promise():
    shown = {words.split()[0] for _, words in COMMANDS if words}
    assert {"run", "train", "evaluate", "inspect", "ls", "bench"} <= shown
    assert len(COMMANDS) > 30


@pytest.mark.parametrize("page, words", COMMANDS, ids=[f"{p}: {w}"[:80] for p, w in COMMANDS])
def test_every_command_shown_parses(page, words):
    error = parses(words)
    assert error is None, f"{page}: python -m benchmark {words}: {error}"


def test_a_command_that_does_not_parse_is_caught():
    assert parses("run --dataset NAME --no-such-option") is not None
    assert parses("ls things") is not None
    assert parses("run --dataset NAME [--methods all] [--seeds N]") is None


# --- every relative link resolves ----------------------------------------------------------


def anchors(text: str) -> set[str]:
    """GitHub's anchors of a Markdown page's headings."""
    slugs = set()
    for heading in re.findall(r"^#{1,6} (.+)$", re.sub(r"```.*?```", "", text, flags=re.S), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        slugs.add(slug)
    return slugs


def broken_links(page: Path, text: str) -> list[str]:
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"```.*?```", "", text, flags=re.S)):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve()
        if path and not file.exists():
            broken.append(f"{target}: no such file")
        elif (
            anchor
            and (not path or file.suffix == ".md")
            and anchor not in anchors(file.read_text() if path else text)
        ):
            broken.append(f"{target}: no heading #{anchor}")
    return broken


def test_every_relative_link_resolves():
    broken = {
        page: found for page, text in PAGES.items() if (found := broken_links(REPO / page, text))
    }
    assert not broken, broken


def test_a_broken_link_is_caught(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\n## Sub part\n")
    page = tmp_path / "b.md"
    text = "[ok](a.md) [ok](a.md#sub-part) [ok](#b) [no](c.md) [no](a.md#nope)\n# B\n"
    assert broken_links(page, text) == ["c.md: no such file", "a.md#nope: no heading #nope"]


def test_the_codes_pointers_into_docs_resolve():
    pointers = {
        (path.relative_to(REPO).as_posix(), target)
        for path in CODE
        for target in re.findall(r"docs/[\w-]+\.md(?:#[\w-]+)?", path.read_text())
    }
    assert any("decisions.md#" in target for _, target in pointers)
    broken = [
        (where, target)
        for where, target in sorted(pointers)
        if broken_links(REPO / "x", f"]({target})")
    ]
    assert not broken, broken
