"""The run() overloads tell a type checker which type comes back (checked with mypy)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import require

SNIPPET = textwrap.dedent(
    """
    from azion_ai import AI, AsyncAI
    ai = AI(base_url="http://127.0.0.1:9/v1")
    a = ai.run("m", {"messages": [{"role": "user", "content": "hi"}], "stream": True})
    b = ai.run("m", {"messages": [{"role": "user", "content": "hi"}]})
    c = ai.run("m", {"messages": [{"role": "user", "content": "hi"}], "stream": False})
    reveal_type(a)
    reveal_type(b)
    reveal_type(c)
    async def f() -> None:
        aai = AsyncAI(base_url="http://127.0.0.1:9/v1")
        d = await aai.run("m", {"messages": [{"role": "user", "content": "hi"}], "stream": True})
        reveal_type(d)
    """
)


@pytest.mark.slow
def test_overloads_pick_stream_or_completion(tmp_path):
    require("mypy")
    path = tmp_path / "snippet.py"
    path.write_text(SNIPPET)
    # mypy's own incremental cache, shared with `mypy azion_ai` in scripts/test.sh (run just before):
    # the package is not analysed twice
    cache = Path(__file__).resolve().parent.parent / ".mypy_cache"
    out = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(cache), str(path)], capture_output=True, text=True)
    revealed = [line.split("Revealed type is ")[1] for line in out.stdout.splitlines() if "Revealed type" in line]
    assert revealed == ['"azion_ai._streaming.Stream"', '"azion_ai._types.ChatCompletion"', '"azion_ai._types.ChatCompletion"', '"azion_ai._streaming.AsyncStream"'], out.stdout
