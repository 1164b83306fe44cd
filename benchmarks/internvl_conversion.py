"""First-load cost of InternVL3's original layout: a random-weight InternVL3-1B at the real shapes,
built in the -hf layout, rebuilt in the original one, then converted (first time, then from the
cache) and loaded. Run: .venv/bin/python benchmarks/internvl_conversion.py (about 8 GB in /tmp)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the tests' checkpoint builders


def main() -> None:
    os.environ["AZION_AI_CACHE"] = "/tmp/measure-cache"
    from azion_ai import AI
    from azion_ai._local._internvl_original import convert
    from checkpoints import build_internvl3_original

    from azion_ai._local._tiny import build_internvl3

    model_id = "opengvlab-internvl3-1b-instruct"
    start = time.time()
    hf = build_internvl3("/tmp/full-hf", full_size=True)
    print("build -hf", round(time.time() - start, 1), "s", flush=True)
    original = build_internvl3_original(hf, "/tmp/full-orig")
    size = sum(p.stat().st_size for p in Path(original).iterdir())
    start = time.time()
    convert(original)
    first = time.time() - start
    start = time.time()
    convert(original)
    again = time.time() - start
    print(f"weights {size / 1e9:.2f} GB; first conversion {first:.1f} s; cached {again * 1000:.0f} ms", flush=True)
    for label, path in (("original", original), ("-hf", hf)):
        start = time.time()
        with AI(backend="local", models={model_id: str(path)}, device="cpu") as ai:
            ai.transport.load(model_id)  # type: ignore[attr-defined]
            print(label, "load", round(time.time() - start, 1), "s", flush=True)


if __name__ == "__main__":
    main()
