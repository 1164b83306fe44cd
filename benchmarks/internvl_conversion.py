"""First-load cost of InternVL3's original layout: a random-weight InternVL3-1B at the real shapes, built
in the -hf layout, rebuilt in the original one, then converted (first time, then from the cache)
and loaded. Run: .venv/bin/python benchmarks/internvl_conversion.py (about 4 GB in /tmp)."""
import os
import time

os.environ["AZION_AI_CACHE"] = "/tmp/measure-cache"
from azion_ai._local._tiny import build_internvl3, build_internvl3_original
from azion_ai._local._internvl_original import convert
t = time.time(); hf = build_internvl3("/tmp/full-hf", full_size=True); print("build hf", round(time.time()-t,1), flush=True)
t = time.time(); orig = build_internvl3_original(hf, "/tmp/full-orig"); print("build original", round(time.time()-t,1), flush=True)
size = sum(p.stat().st_size for p in orig.iterdir())
t = time.time(); out = convert(orig); first = time.time()-t
t = time.time(); convert(orig); again = time.time()-t
print(f"weights {size/1e9:.2f} GB; first conversion {first:.1f} s; cached {again*1000:.0f} ms", flush=True)
from azion_ai import AI
I="opengvlab-internvl3-1b-instruct"
for label, path in (("original", orig), ("hf", hf)):
    t = time.time()
    with AI(backend="local", models={I: str(path)}, device="cpu") as ai:
        ai.transport.load(I)
        print(label, "load", round(time.time()-t,1), "s", flush=True)
