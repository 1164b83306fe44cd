"""The wheel carries the schemas and the typing marker, and validates from an installed copy."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_wheel_ships_schemas_and_works_installed(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), str(ROOT)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("azion_ai-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "azion_ai/schemas/qwen-qwen25-vl-3b-instruct-awq.json" in names
    assert "azion_ai/schemas/opengvlab-internvl3-1b-instruct.json" in names
    assert "azion_ai/py.typed" in names
    assert "azion_ai/_local/templates/qwen25_tokenizer.jinja" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True, capture_output=True)
    code = (
        "import azion_ai, sys; assert azion_ai.__file__.startswith(sys.argv[1]), azion_ai.__file__;"
        "azion_ai.validate('opengvlab-internvl3-1b-instruct', {'messages': [{'role': 'user', 'content': 'hi'}]});"
        "print(azion_ai._models._schema_dir())"
    )
    out = subprocess.run([sys.executable, "-c", code, str(target)], cwd=tmp_path, env={"PYTHONPATH": str(target)}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(target / "azion_ai" / "schemas")
