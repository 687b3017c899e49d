"""The README's examples run as printed, and CI's command is the README's."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks, "the README shows no python example"
    for code in blocks:
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

    blocks = re.findall(r"```yaml\n(.*?)```", README, flags=re.S)
    assert blocks, "the README shows no settings file"
    for code in blocks:
        path = tmp_path / "settings.yaml"
        path.write_text(code)
        settings = load_settings(path, [])
        assert settings["train"] and settings["run"] and settings["tomography"]
