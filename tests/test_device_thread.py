"""One thread owns a device: every model's work runs there, and no model starves another.

Also: a failure (an out-of-memory error injected into a forward) fails only the requests it hit,
with an SDK error that says what to reduce, and the next request is served.
"""

from __future__ import annotations

import threading

import pytest
from conftest import INTERNVL_ID, QWEN_ID, png_data_uri, require

import azion_ai
from azion_ai import AI

pytestmark = pytest.mark.local
torch = require("torch")

SHORT = {"messages": [{"role": "user", "content": "Name the european capitals"}], "max_tokens": 3, "temperature": 0}


def _engine(ai, model_id):
    ai.transport.load(model_id)
    return ai.transport._engines[model_id]


def _record_threads(engine, seen):
    return engine.loaded.model.register_forward_hook(lambda *a: seen.append(threading.get_ident()))


def test_every_model_of_every_ai_runs_on_the_one_device_thread(tiny_dirs):
    models = {k: str(v) for k, v in tiny_dirs.items()}
    with AI(backend="local", models=models, device="cpu") as first, AI(backend="local", models=models, device="cpu") as second:
        engines = [_engine(first, QWEN_ID), _engine(first, INTERNVL_ID), _engine(second, INTERNVL_ID)]
        seen: dict[int, list[int]] = {i: [] for i in range(3)}
        hooks = [_record_threads(e, seen[i]) for i, e in enumerate(engines)]
        try:
            ran = []

            def call(ai, model_id):
                ran.append(ai.run(model_id, SHORT).usage.completion_tokens)

            callers = [threading.Thread(target=call, args=a) for a in ((first, QWEN_ID), (first, INTERNVL_ID), (second, INTERNVL_ID))]
            for t in callers:
                t.start()
            for t in callers:
                t.join(120)
        finally:
            for hook in hooks:
                hook.remove()
        assert ran == [3, 3, 3]
        threads = {ident for idents in seen.values() for ident in idents}
        assert all(seen.values()) and len(threads) == 1  # three models, two AIs: one thread
        assert threads != {threading.get_ident()} and threads == {engines[0].device_thread}
        assert engines[1].device_thread == engines[2].device_thread


def test_a_long_request_on_one_model_does_not_hold_back_another_model(tiny_dirs):
    models = {k: str(v) for k, v in tiny_dirs.items()}
    with AI(backend="local", models=models, device="cpu") as ai:
        long_engine = _engine(ai, INTERNVL_ID)
        _engine(ai, QWEN_ID)
        no_eos = {str(t): -100 for t in long_engine.checkpoint.eos_token_ids}
        long = {**SHORT, "max_tokens": 3000, "stream": True, "logit_bias": no_eos}
        steps: list[int] = []
        hook = long_engine.loaded.model.register_forward_hook(lambda *a: steps.append(1))
        try:
            stream = ai.run(INTERNVL_ID, long)
            next(iter(stream))  # the long request is generating
            before = len(steps)
            short = ai.run(QWEN_ID, SHORT)  # answered while the long one runs
            during = len(steps)
            assert short.usage.completion_tokens == 3
            assert during - before < 500  # it waited a few of the long request's steps, not 3000
            chunks = sum(1 for _ in zip(range(20), stream, strict=False))
            assert chunks == 20  # and the long one is still going
            stream.close()
        finally:
            hook.remove()
        assert len(steps) < 3000


def test_requests_of_one_model_join_a_running_batch(tiny_dirs):
    """A short request that arrives while a long one decodes joins its batch (one forward for
    both rows) and leaves when done; the long one goes on."""
    with AI(backend="local", models={INTERNVL_ID: str(tiny_dirs[INTERNVL_ID])}, device="cpu") as ai:
        engine = _engine(ai, INTERNVL_ID)
        no_eos = {str(t): -100 for t in engine.checkpoint.eos_token_ids}
        stream = ai.run(INTERNVL_ID, {**SHORT, "max_tokens": 3000, "stream": True, "logit_bias": no_eos})
        next(iter(stream))
        expected_alone = None
        short = ai.run(INTERNVL_ID, {**SHORT, "max_tokens": 8})
        assert 2 in engine.batch_sizes  # the two requests shared forwards
        stream.close()
        expected_alone = ai.run(INTERNVL_ID, {**SHORT, "max_tokens": 8})
        assert short.choices[0].message.content == expected_alone.choices[0].message.content


def test_device_names_are_normalised():
    from azion_ai._local._device_worker import device_key

    assert device_key("cuda") == device_key("cuda:0") == device_key(torch.device("cuda", 0)) == "cuda:0"
    assert device_key("cpu") == device_key(torch.device("cpu")) == "cpu"
    assert device_key("cuda:1") == "cuda:1"


def test_the_worker_goes_with_its_last_model():
    from azion_ai._local import _device_worker

    first = _device_worker.acquire(torch.device("meta"))
    second = _device_worker.acquire("meta")
    assert first is second and first.alive
    _device_worker.release(first)
    assert first.alive and "meta" in _device_worker.workers()
    _device_worker.release(second)
    assert not first.alive and "meta" not in _device_worker.workers()


# -- out of memory ------------------------------------------------------------------------------------


def _image_request(tokens=4):
    image = {"type": "image_url", "image_url": {"url": png_data_uri((10, 200, 30), size=(96, 64))}}
    return {"messages": [{"role": "user", "content": [image, {"type": "text", "text": "What?"}]}], "max_tokens": tokens, "temperature": 0}


def test_out_of_memory_fails_only_the_request_it_hit(tiny_dirs):
    with AI(backend="local", models={INTERNVL_ID: str(tiny_dirs[INTERNVL_ID])}, device="cpu") as ai:
        engine = _engine(ai, INTERNVL_ID)
        expected = ai.run(INTERNVL_ID, {**SHORT, "max_tokens": 40}).choices[0].message.content
        expected_image = ai.run(INTERNVL_ID, _image_request()).choices[0].message.content

        def oom(*args):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")

        running = ai.run(INTERNVL_ID, {**SHORT, "max_tokens": 40, "stream": True})
        first = next(iter(running))
        hook = engine.loaded.model.model.vision_tower.register_forward_hook(oom)
        try:
            with pytest.raises(azion_ai.LocalBackendError) as caught:
                ai.run(INTERNVL_ID, _image_request())
        finally:
            hook.remove()
        message = str(caught.value)
        assert "out of memory" in message and "smaller images" in message and "max_batch_size" in message and "concurrent" in message
        # the request decoding beside it was not hit: it ends with its own answer
        text = (first.choices[0].delta.content or "") + "".join(c.choices[0].delta.content or "" for c in running if c.choices)
        assert text == expected
        assert ai.run(INTERNVL_ID, _image_request()).choices[0].message.content == expected_image  # served again


def test_out_of_memory_in_a_decode_step_fails_its_rows_and_the_model_serves_on(tiny_dirs):
    with AI(backend="local", models={INTERNVL_ID: str(tiny_dirs[INTERNVL_ID])}, device="cpu") as ai:
        engine = _engine(ai, INTERNVL_ID)
        expected = ai.run(INTERNVL_ID, SHORT).choices[0].message.content
        calls = []

        def oom(*args):
            calls.append(1)
            if len(calls) == 3:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")

        hook = engine.loaded.model.lm_head.register_forward_hook(oom)
        try:
            with pytest.raises(azion_ai.LocalBackendError, match="out of memory.*max_batch_size"):
                ai.run(INTERNVL_ID, {**SHORT, "max_tokens": 10})
        finally:
            hook.remove()
        assert ai.run(INTERNVL_ID, SHORT).choices[0].message.content == expected


def test_loading_says_what_it_is_doing(tiny_dirs, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="azion_ai.progress")
    with AI(backend="local", models={INTERNVL_ID: str(tiny_dirs[INTERNVL_ID])}, device="cpu") as ai:
        ai.transport.load(INTERNVL_ID)
    lines = [r.getMessage() for r in caplog.records if r.name == "azion_ai.progress"]
    assert any("loading the weights" in line for line in lines) and any("ready on cpu" in line for line in lines)


def test_each_row_keeps_its_own_sampling_inside_a_batch(tiny_dirs):
    """A seeded, penalised, biased request with logprobs draws the same tokens alone and while
    decoding beside another request (its own generator and state per row)."""
    with AI(backend="local", models={INTERNVL_ID: str(tiny_dirs[INTERNVL_ID])}, device="cpu") as ai:
        engine = _engine(ai, INTERNVL_ID)
        seeded = {**SHORT, "max_tokens": 12, "temperature": 1.3, "top_p": 0.95, "seed": 11, "frequency_penalty": 0.7,
                  "logit_bias": {"5": 3.0}, "logprobs": True, "top_logprobs": 2}
        alone = ai.run(INTERNVL_ID, seeded)
        no_eos = {str(t): -100 for t in engine.checkpoint.eos_token_ids}
        stream = ai.run(INTERNVL_ID, {**SHORT, "max_tokens": 3000, "stream": True, "logit_bias": no_eos, "temperature": 0.9})
        next(iter(stream))
        before = len(engine.batch_sizes)
        beside = ai.run(INTERNVL_ID, seeded)
        stream.close()
        assert max(engine.batch_sizes[before:]) == 2  # it really decoded beside the other request
        assert beside.choices[0].message.content == alone.choices[0].message.content
        def tokens(answer):
            return [entry["token"] for entry in answer.model_dump()["choices"][0]["logprobs"]["content"]]

        assert tokens(beside) == tokens(alone) and len(tokens(alone)) == alone.usage.completion_tokens
