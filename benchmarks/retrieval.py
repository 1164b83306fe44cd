"""The retrieval models on the local backend against their own reference usage, side by side:
embeddings of 1,000 short texts (``ai.run`` against sentence-transformers' ``SentenceTransformer
.encode``) and a rerank of 100 documents (``ai.run`` against its ``CrossEncoder.predict``), on
the same checkpoint, in the same process, interleaved round by round; medians and their ratio.

    .venv/bin/python benchmarks/retrieval.py                 # tiny checkpoints (built once), CPU
    .venv/bin/python benchmarks/retrieval.py --embed-dir DIR --rerank-dir DIR --device cuda
    .venv/bin/python benchmarks/retrieval.py --smoke         # small counts: proves it runs

Both sides use their defaults (sentence-transformers: batches of 32; ours: one request, batched
forwards up to 16,384 padded tokens). The largest difference between the two sides' numbers is
printed too, so a speed-up never hides a different answer.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

EMBED = "qwen-qwen3-embedding-4b"
RERANK = "baai-bge-reranker-v2-m3"
WORDS = ["deep", "learning", "neural", "networks", "many", "layers", "weather", "nice", "today", "pizza", "food", "delicious", "waiter", "friendly", "computers", "learn", "large", "amounts", "data", "query", "documents", "answer", "retrieval", "rank", "passages", "search", "capital"]


def short_texts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))) for _ in range(count)]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def side_by_side(ours: Callable[[], Any], theirs: Callable[[], Any], rounds: int) -> tuple[float, float, Any, Any]:
    """Median seconds of each (one warm-up call each first), alternating which goes first."""
    ours(), theirs()
    a: list[float] = []
    b: list[float] = []
    for r in range(rounds):
        order = [(ours, a), (theirs, b)] if r % 2 == 0 else [(theirs, b), (ours, a)]
        for fn, times in order:
            seconds, _ = timed(fn)
            times.append(seconds)
    return statistics.median(a), statistics.median(b), ours(), theirs()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--embed-dir")
    parser.add_argument("--rerank-dir")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--documents", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.texts, args.documents, args.rounds = 20, 5, 1
    import numpy as np
    from sentence_transformers import CrossEncoder, SentenceTransformer

    from azion_ai import AI

    if not (args.embed_dir and args.rerank_dir):
        from azion_ai._local._tiny import ensure_tiny_checkpoints

        dirs = ensure_tiny_checkpoints()
        args.embed_dir = args.embed_dir or str(dirs[EMBED])
        args.rerank_dir = args.rerank_dir or str(dirs[RERANK])
    texts = short_texts(args.texts)
    documents = short_texts(args.documents, seed=1)
    query = "What is deep learning?"
    rows = []
    with AI(backend="local", models={EMBED: args.embed_dir, RERANK: args.rerank_dir}, device=args.device) as ai:
        st = SentenceTransformer(args.embed_dir, device=args.device)
        ours_s, theirs_s, ours_out, theirs_out = side_by_side(
            lambda: ai.run(EMBED, {"input": texts}), lambda: st.encode(texts, convert_to_numpy=True), args.rounds
        )
        diff = float(np.abs(np.array([d.embedding for d in ours_out.data]) - theirs_out).max())
        rows.append((f"embeddings, {args.texts} short texts", ours_s, theirs_s, args.texts, diff))
        ce = CrossEncoder(args.rerank_dir, device=args.device)
        pairs = [(query, d) for d in documents]
        ours_s, theirs_s, ours_out, theirs_out = side_by_side(
            lambda: ai.run(RERANK, {"query": query, "documents": documents}), lambda: ce.predict(pairs), args.rounds
        )
        scores = np.zeros(len(documents))
        for result in ours_out.results:
            scores[result.index] = result.relevance_score
        rows.append((f"rerank, {args.documents} documents", ours_s, theirs_s, args.documents, float(np.abs(scores - theirs_out).max())))
    print(f"device {args.device}; medians of {args.rounds} interleaved rounds after a warm-up; `{' '.join(['benchmarks/retrieval.py', *(argv if argv is not None else sys.argv[1:])])}`\n")
    print("| task | azion_ai `ai.run` (local, transformers) | sentence-transformers | ratio (theirs / ours time) | largest difference |")
    print("| --- | --- | --- | --- | --- |")
    for task, ours_s, theirs_s, count, diff in rows:
        print(f"| {task} | {ours_s * 1000:,.1f} ms ({count / ours_s:,.0f}/s) | {theirs_s * 1000:,.1f} ms ({count / theirs_s:,.0f}/s) | {theirs_s / ours_s:.2f}x | {diff:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
