"""Every command in the README and docs/ is accepted as written: its script exists and its flags parse."""

import argparse
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def commands(text: str) -> list[str]:
    """The python / torchrun commands of a Markdown text: lines of ```bash blocks (continued with a backslash) and
    inline code spans that start with one."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            found.append(line.split("  #")[0].strip())
    found += re.findall(r"`((?:python|torchrun) [^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    cleaned = []
    for command in found:
        command = command.split("&&")[-1].strip()  # pip install ... && python main.py
        command = re.sub(r"^(?:[A-Z_][A-Z0-9_]*=\S*\s+)+", "", command)  # OMP_NUM_THREADS=1 python ...
        if command.startswith(("python", "torchrun")) and "..." not in command and "pytest" not in command:
            cleaned.append(command)
    return cleaned


def target(command: str) -> tuple[str, str, list[str]]:
    """("path" or "module", what, argv) of a command."""
    words = shlex.split(command)
    words = words[next(i for i, w in enumerate(words) if w.endswith(".py") or w == "-m"):]
    if words[0] == "-m":
        return "module", words[1], words[2:]
    return "path", words[0], words[1:]


ALL = sorted({(doc.name, c) for doc in DOCS for c in commands(doc.read_text())})


def test_the_docs_hold_commands():
    names = {name for name, _ in ALL}
    assert {"README.md", "results.md", "training.md", "evaluation.md"} <= names and len(ALL) > 30


class Parsed(Exception):
    pass


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
@pytest.mark.parametrize("doc, command", ALL, ids=[f"{d}: {c[:60]}" for d, c in ALL])
def test_a_documented_command_parses(doc, command, monkeypatch, capsys):
    original = argparse.ArgumentParser.parse_args

    def parse_only(self, args=None, namespace=None):
        raise Parsed(original(self, args, namespace))  # a bad flag exits with status 2 before this

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    kind, what, argv = target(command)
    monkeypatch.setattr(sys, "argv", [what, *argv])
    monkeypatch.syspath_prepend(str(ROOT))
    if kind == "path":
        assert (ROOT / what).is_file(), f"{doc}: {what} does not exist"
    with pytest.raises(Parsed):
        try:
            runpy.run_path(str(ROOT / what), run_name="__main__") if kind == "path" else \
                runpy.run_module(what, run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            if exc.code == 0:  # --help
                raise Parsed() from None
            pytest.fail(f"{doc}: `{command}` is refused: {capsys.readouterr().err.strip() or exc}")
