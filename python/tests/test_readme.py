"""The README's Python examples (```python blocks of its Python section) run as written, each in a
fresh interpreter in an empty directory; those importing torch are skipped where torch is not
importable."""
import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_has_its_five_python_examples():
    assert len(EXAMPLES) == 5


@pytest.mark.parametrize("number", range(len(EXAMPLES)))
def test_readme_example_runs(number, tmp_path):
    example = EXAMPLES[number]
    if "import torch" in example and importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not importable")
    result = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True,
                            env=os.environ)
    assert result.returncode == 0, f"README example {number + 1}:\n{example}\n{result.stdout}{result.stderr}"
    # a comment stating what a print prints must be what it printed
    for printed in re.findall(r"^print\(.*\)\s+# (.*)$", example, re.M):
        assert printed in result.stdout, f"README example {number + 1} printed {result.stdout!r}, not {printed!r}"
