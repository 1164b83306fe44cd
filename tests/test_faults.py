"""Network faults against a misbehaving loopback server: each ends in the documented exception
after the documented number of tries; a truncated stream is an error, never a short answer."""

from __future__ import annotations

import gc
import logging
import os
import threading
import traceback

import httpx
import pytest
from conftest import TOKEN
from faulty_server import FaultyServer, closed_port

import azion_ai
from azion_ai import AI, AsyncAI

MODEL = "qwen-qwen25-vl-3b-instruct-awq"
PAYLOAD = {"messages": [{"role": "user", "content": "Hi"}]}
STREAM = {**PAYLOAD, "stream": True}


@pytest.fixture(scope="module")
def faulty():
    with FaultyServer() as server:
        yield server


def tries(server, mode):
    return server.hits[mode]


def test_connection_refused_is_retried_then_raised(no_sleep):
    ai = AI(base_url=f"http://127.0.0.1:{closed_port()}/v1", max_retries=2)
    with pytest.raises(azion_ai.APIConnectionError):
        ai.run(MODEL, PAYLOAD)
    assert len(no_sleep) == 2  # three tries


def test_reset_before_headers(faulty, no_sleep):
    with pytest.raises(azion_ai.APIConnectionError):
        AI(base_url=faulty.url("reset-before-headers"), max_retries=1).run(MODEL, PAYLOAD)
    assert tries(faulty, "reset-before-headers") == 2


def test_reset_mid_stream_raises_and_is_not_retried(faulty, no_sleep):
    stream = AI(base_url=faulty.url("reset-mid-stream")).run(MODEL, STREAM)
    assert next(stream).choices[0].delta.content == "hi"
    with pytest.raises(azion_ai.APIConnectionError):
        list(stream)
    assert tries(faulty, "reset-mid-stream") == 1


def test_stream_without_done_is_an_error(faulty):
    stream = AI(base_url=faulty.url("no-done")).run(MODEL, STREAM)
    with pytest.raises(azion_ai.StreamError, match="DONE"):
        stream.get_final_completion()


def test_garbage_sse_raises(faulty):
    with pytest.raises(azion_ai.StreamError, match="malformed"):
        list(AI(base_url=faulty.url("garbage-sse")).run(MODEL, STREAM))


def test_slow_server_past_the_timeout(faulty, no_sleep):
    with pytest.raises(azion_ai.APITimeoutError):
        AI(base_url=faulty.url("slow"), timeout=0.3, max_retries=1).run(MODEL, PAYLOAD)
    assert tries(faulty, "slow") == 2


def test_429_with_retry_after_then_success(faulty, no_sleep):
    completion = AI(base_url=faulty.url("rate-limited"), max_retries=2).run(MODEL, PAYLOAD)
    assert completion.choices[0].message.content == "ok"
    assert no_sleep == [0.2, 0.2] and tries(faulty, "rate-limited") == 3


def test_5xx_until_retries_run_out(faulty, no_sleep):
    with pytest.raises(azion_ai.ServiceUnavailableError, match="overloaded"):
        AI(base_url=faulty.url("always-503"), max_retries=3).run(MODEL, PAYLOAD)
    assert tries(faulty, "always-503") == 4 and len(no_sleep) == 3


def test_non_json_success_body(faulty):
    with pytest.raises(azion_ai.APIResponseValidationError):
        AI(base_url=faulty.url("html")).run(MODEL, PAYLOAD)


async def test_async_faults(faulty, no_sleep):
    async with AsyncAI(base_url=faulty.url("reset-mid-stream")) as ai:
        stream = await ai.run(MODEL, STREAM)
        with pytest.raises(azion_ai.APIConnectionError):
            async for _ in stream:
                pass
    async with AsyncAI(base_url=faulty.url("slow"), timeout=0.3, max_retries=0) as ai:
        with pytest.raises(azion_ai.APITimeoutError):
            await ai.run(MODEL, PAYLOAD)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_many_requests_leave_no_connections_or_fds_behind(faulty):
    gc.collect()
    before = _open_fds()
    with AI(base_url=faulty.url("ok")) as ai:
        for i in range(1000):
            if i % 2:
                ai.run(MODEL, PAYLOAD)
            else:
                for _ in ai.run(MODEL, STREAM):
                    pass
        during = _open_fds()
        # streams abandoned half-way, without close(), are released when collected
        for _ in range(50):
            stream = ai.run(MODEL, STREAM)
            next(stream)
            del stream
        gc.collect()
        assert _open_fds() - before <= 20  # httpx's pool keeps at most a few keep-alive sockets
    gc.collect()
    assert during - before <= 20
    assert _open_fds() <= before + 2


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
async def test_200_concurrent_requests_leave_no_fds_behind(faulty):
    import asyncio

    gc.collect()
    before = _open_fds()
    limits = httpx.Limits(max_connections=50, max_keepalive_connections=10)
    async with AsyncAI(base_url=faulty.url("ok"), http_client=httpx.AsyncClient(limits=limits)) as ai:
        async def one(i):
            if i % 2:
                return await ai.run(MODEL, PAYLOAD)
            return await (await ai.run(MODEL, STREAM)).get_final_completion()

        results = await asyncio.gather(*(one(i) for i in range(200)))
        assert len(results) == 200
        assert _open_fds() - before <= 50 + 5
    await ai.transport._client.aclose()  # the injected client is ours to close
    gc.collect()
    assert _open_fds() <= before + 2


def test_token_never_appears_anywhere(faulty, caplog, no_sleep, capsys):
    caplog.set_level(logging.DEBUG)  # httpx and httpcore debug logs included
    seen: list[str] = []
    for mode, payload in (("always-503", PAYLOAD), ("reset-before-headers", PAYLOAD), ("reset-mid-stream", STREAM), ("garbage-sse", STREAM), ("slow", PAYLOAD), ("html", PAYLOAD)):
        ai = AI(base_url=faulty.url(mode), token=TOKEN, timeout=0.3, max_retries=1)
        seen += [repr(ai), str(ai), repr(ai.transport), repr(vars(ai.transport))]
        try:
            result = ai.run(MODEL, payload)
            if payload.get("stream"):
                list(result)
        except azion_ai.AzionAIError as exc:
            seen += [str(exc), repr(exc), "".join(traceback.format_exception(exc)), repr(vars(exc))]
    def worker():
        AI(base_url=faulty.url("ok"), token=TOKEN).run(MODEL, PAYLOAD)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    seen.append(caplog.text)
    out = capsys.readouterr()
    seen += [out.out, out.err]
    assert caplog.text  # the logs were captured and scanned
    for text in seen:
        assert TOKEN not in text


# -- a fleet: base_url as a list -----------------------------------------------------------------


def test_a_fleet_fails_over_on_connection_errors_and_5xx(faulty, no_sleep):
    fleet = [f"http://127.0.0.1:{closed_port()}/v1", faulty.url("always-503"), faulty.url("ok")]
    before = {m: tries(faulty, m) for m in ("always-503", "ok")}
    with AI(base_url=fleet, max_retries=0) as ai:
        assert ai.run(MODEL, PAYLOAD).choices[0].message.content == "ok"
        assert tries(faulty, "always-503") == before["always-503"] + 1 and tries(faulty, "ok") == before["ok"] + 1
        assert no_sleep == []  # failing over waits for nothing
        # the URLs that failed are tried last for a while: the next requests go straight to "ok"
        for _ in range(3):
            ai.run(MODEL, PAYLOAD)
    assert tries(faulty, "always-503") == before["always-503"] + 1 and tries(faulty, "ok") == before["ok"] + 4


def test_a_fleet_spreads_requests_round_robin(faulty):
    with AI(base_url=[faulty.url("ok"), faulty.url("slow")], max_retries=0, timeout=30) as ai:
        before = (tries(faulty, "ok"), tries(faulty, "slow"))
        for _ in range(4):
            ai.run(MODEL, PAYLOAD)
    assert (tries(faulty, "ok") - before[0], tries(faulty, "slow") - before[1]) == (2, 2)


def test_a_fleet_does_not_fail_over_on_the_requests_own_errors(faulty, no_sleep):
    before = (tries(faulty, "html"), tries(faulty, "ok"))
    with AI(base_url=[faulty.url("html"), faulty.url("ok")], max_retries=0) as ai, pytest.raises(azion_ai.APIError):
        ai.run(MODEL, PAYLOAD)
    assert tries(faulty, "ok") == before[1]  # a bad answer (not a 5xx / connection error) is not replayed elsewhere


def test_a_fleet_never_replays_a_stream_that_delivered_data(faulty):
    before = (tries(faulty, "reset-mid-stream"), tries(faulty, "ok"))
    with AI(base_url=[faulty.url("reset-mid-stream"), faulty.url("ok")], max_retries=3) as ai:
        stream = ai.run(MODEL, STREAM)
        with pytest.raises(azion_ai.APIError):
            list(stream)
    assert tries(faulty, "reset-mid-stream") == before[0] + 1 and tries(faulty, "ok") == before[1]


async def test_a_fleet_fails_over_async(faulty, no_sleep):
    fleet = [f"http://127.0.0.1:{closed_port()}/v1", faulty.url("ok")]
    async with AsyncAI(base_url=fleet, max_retries=0) as ai:
        done = await ai.run(MODEL, PAYLOAD)
    assert done.choices[0].message.content == "ok"


def test_a_fleet_from_the_environment(faulty, monkeypatch):
    monkeypatch.setenv("AZION_AI_BASE_URL", f"{faulty.url('ok')}, {faulty.url('ok')}")
    with AI() as ai:
        assert len(ai.transport.base_urls) == 2
        assert ai.run(MODEL, PAYLOAD).choices[0].message.content == "ok"
