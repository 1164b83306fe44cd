"""Response shaping: token ids in, OpenAI ``chat.completion`` / chunk dicts out.

One place for both engines, so they answer alike: incremental detokenization, stop strings
(vLLM's rule), hermes tool calls, logprobs in OpenAI's shape, usage, the finish chunk that carries
the last token and the ``include_usage`` chunk, as vLLM sends them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._chat import IncrementalDecoder, ToolCallParser

if TYPE_CHECKING:
    from ._loading import Checkpoint
    from ._request import PreparedRequest

TokenLogprob = tuple[float, Sequence[tuple[int, float]]]
"""A token's logprob and its best alternatives as (token id, logprob), best first."""


class _Choice:
    """One choice's text on its way out: decoding, stop strings, tool calls, logprobs."""

    def __init__(self, index: int, tokenizer: Any, tool_mode: str, stops: tuple[str, ...] = ()) -> None:
        self.index = index
        # With tools, vLLM keeps special tokens in the text (hermes tags are special in some
        # checkpoints): the same here, so the parser sees the same text.
        self.decoder = IncrementalDecoder(tokenizer, skip_special_tokens=tool_mode in ("none", "text"))
        self.mode = tool_mode
        self.parser = ToolCallParser(forced=tool_mode in ("named", "required")) if tool_mode in ("auto", "named", "required") else None
        self.stops = stops
        self._hold = max((len(s) for s in stops), default=1) - 1  # never leak a partial stop string
        self._text = ""  # all text so far, cut at a matched stop string
        self._released = 0
        self._closed = False
        self.content: list[str] = []
        self.tool_calls: list[dict[str, Any]] = []
        self.logprobs: list[dict[str, Any]] = []
        self.tokens = 0
        self.finish_reason: str | None = None
        self.stop_reason: str | None = None
        self.last_delta: dict[str, Any] | None = None
        self.last_logprobs: list[dict[str, Any]] = []

    def _release(self, piece: str, final: bool) -> str:
        """Text that can go out now: stop strings checked (vLLM's rule: the first listed one that
        occurs ends the output before it), a possible start of one held back."""
        if not self.stops:
            return piece
        before = len(self._text)
        self._text += piece
        for stop in self.stops:
            at = self._text.find(stop, max(0, before - len(stop) + 1))
            if at >= 0:
                self._text = self._text[:at]
                self.stop_reason, self.finish_reason = stop, "stop"
                final = True
                break
        end = len(self._text) if final else max(self._released, len(self._text) - self._hold)
        out, self._released = self._text[self._released : end], end
        return out

    def text(self, piece: str, final: bool = False) -> dict[str, Any] | None:
        """The delta for a piece of generated text (content and/or tool calls), or None."""
        if self._closed:
            return None
        piece = self._release(piece, final)
        final = final or self.stop_reason is not None
        calls: list[dict[str, Any]] = []
        content = piece if self.parser is None else self.parser.feed(piece)
        if final and self.parser is not None:
            rest = self.parser.finish()
            content += rest.content
            calls = rest.tool_calls
        if final:
            self._closed = True
        delta: dict[str, Any] = {}
        if content:
            self.content.append(content)
            delta["content"] = content
        if calls:
            start = len(self.tool_calls)
            self.tool_calls.extend(calls)
            delta["tool_calls"] = [{"index": start + k, **call} for k, call in enumerate(calls)]
        return delta or None


def _unfinished(text: str) -> bool:
    """A token that may belong to a character still being spelled: a partial byte, or a textless
    (special) token, which can sit between a character's bytes and must not end the walk back."""
    return text == "" or text.endswith("\ufffd")


def decoded_token(tokenizer: Any, token: int, context: Sequence[int]) -> str:
    """A token's text for logprobs, as vLLM gives it: a byte of an unfinished character is "",
    and the token that finishes one carries the whole character (read with up to 4 preceding
    tokens of the output as context)."""
    text = str(tokenizer.decode([token]))
    if not text.endswith("\ufffd"):
        return text
    for size in range(1, min(len(context), 4) + 1):
        before = list(context[-size:])
        whole = str(tokenizer.decode([*before, token]))
        if whole.endswith("\ufffd"):
            continue
        clean = len(before)
        while clean > 0 and _unfinished(str(tokenizer.decode([before[clean - 1]]))):
            clean -= 1
        prefix = str(tokenizer.decode(before[:clean])) if clean else ""
        common = 0
        for a, b in zip(prefix, whole, strict=False):
            if a != b:
                break
            common += 1
        return whole[common:]
    return ""


def logprob_entry(tokenizer: Any, token: int, logprob: float, top: Sequence[tuple[int, float]], context: Sequence[int] = ()) -> dict[str, Any]:
    """One token in OpenAI's chat logprobs shape."""

    def item(tid: int, lp: float) -> dict[str, Any]:
        text = decoded_token(tokenizer, tid, context)
        return {"token": text, "logprob": max(lp, -9999.0), "bytes": list(text.encode("utf-8", errors="replace"))}

    return {**item(token, logprob), "top_logprobs": [item(t, lp) for t, lp in top]}


def one_choice_each(chunk: dict[str, Any]) -> list[dict[str, Any]]:
    """A chunk as vLLM and OpenAI send it: one choice per chunk (clients read ``choices[0]``), so
    a step of ``n > 1`` choices goes out as one chunk per choice, in index order."""
    choices = chunk.get("choices") or ()
    if len(choices) <= 1:
        return [chunk]
    return [{**chunk, "choices": [choice]} for choice in choices]


class ResponseBuilder:
    """Token ids in; chunk dicts (for streams) and the final completion dict out."""

    def __init__(
        self,
        tokenizer: Any,
        eos_token_ids: Sequence[int],
        model_id: str,
        n: int,
        max_tokens: int,
        prompt_tokens: int,
        *,
        tool_mode: str = "text",
        include_usage: bool = False,
        stops: tuple[str, ...] = (),
        logprobs: bool = False,
    ) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model_id = model_id
        self.eos = set(eos_token_ids)
        self.max_tokens = max_tokens
        self.prompt_tokens = prompt_tokens
        self.include_usage = include_usage
        self.tokenizer = tokenizer
        self.with_logprobs = logprobs
        self.choices = [_Choice(i, tokenizer, tool_mode, stops) for i in range(n)]

    @classmethod
    def for_request(cls, checkpoint: Checkpoint, request: PreparedRequest, max_tokens: int, prompt_tokens: int) -> ResponseBuilder:
        params = request.params
        return cls(
            checkpoint.tokenizer, checkpoint.eos_token_ids, request.model.id, params.n, max_tokens, prompt_tokens,
            tool_mode=request.tool_mode, include_usage=params.include_usage, stops=params.stop,
            logprobs=params.logprobs is not None,
        )

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model_id,
            "choices": choices,
        }
        if usage is not None:
            chunk["usage"] = usage
        return chunk

    def first_chunk(self) -> dict[str, Any]:
        return self._chunk(
            [{"index": c.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None} for c in self.choices]
        )

    def step(self, row_ids: Sequence[int], logprobs: Sequence[TokenLogprob] | None = None) -> dict[str, Any] | None:
        """One token per choice (and, with logprobs, each one's logprob and top alternatives)."""
        out = []
        for row, tid in enumerate(row_ids):
            choice = self.add(row, int(tid), logprobs[row] if logprobs is not None else None)
            if choice is not None:
                out.append(choice)
        return self._chunk(out) if out else None

    def add(self, index: int, tid: int, logprob: TokenLogprob | None = None) -> dict[str, Any] | None:
        """One token for choice ``index``: that choice's entry for a chunk, or None (nothing to
        send yet, or the choice finished: its last piece goes out with :meth:`finish`)."""
        choice = self.choices[index]
        if choice.finish_reason is not None:
            return None
        choice.tokens += 1
        entry = None
        if self.with_logprobs and logprob is not None:
            entry = logprob_entry(self.tokenizer, tid, logprob[0], logprob[1], choice.decoder.ids[-4:])
            choice.logprobs.append(entry)
        if tid in self.eos:
            choice.finish_reason = "stop"
            choice.last_logprobs = [entry] if entry else []
            return None
        delta = choice.text(choice.decoder.add(tid))
        if choice.finish_reason is None and choice.tokens >= self.max_tokens:
            choice.finish_reason = "length"
        if choice.finish_reason is not None:  # max_tokens or a stop string
            choice.last_delta = delta  # sent with the finish chunk, as vLLM sends the last token
            choice.last_logprobs = [entry] if entry else []
            return None
        if delta or entry:
            return {"index": choice.index, "delta": delta or {}, "logprobs": {"content": [entry]} if entry else None, "finish_reason": None}
        return None

    def chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        """A chunk holding these choices' entries (from :meth:`add`)."""
        return self._chunk(choices)

    @property
    def all_finished(self) -> bool:
        return all(c.finish_reason is not None for c in self.choices)

    def usage(self) -> dict[str, Any]:
        completion = sum(c.tokens for c in self.choices)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "prompt_tokens_details": None,
        }

    def finish(self) -> list[dict[str, Any]]:
        """The last chunks: held-back text, the finish chunk, and (``stream_options.include_usage``)
        the usage chunk with no choices, as vLLM sends them."""
        chunks: list[dict[str, Any]] = []
        last = []
        for choice in self.choices:
            delta = dict(choice.last_delta or {})
            for key, value in (choice.text(choice.decoder.flush(), final=True) or {}).items():
                delta[key] = delta.get(key, type(value)()) + value  # content: str; tool_calls: list
            if choice.finish_reason is None:
                choice.finish_reason = "length" if choice.tokens >= self.max_tokens else "stop"
            # as vLLM: "tool_calls" for auto calls (also when cut at max_tokens) and for required
            # ones that ended normally; a named function keeps "stop"
            if choice.tool_calls and (choice.mode == "auto" or (choice.mode == "required" and choice.finish_reason == "stop")):
                choice.finish_reason = "tool_calls"
            logprobs = {"content": choice.last_logprobs} if self.with_logprobs else None
            last.append({"index": choice.index, "delta": delta, "logprobs": logprobs, "finish_reason": choice.finish_reason, "stop_reason": choice.stop_reason})
        chunks.append(self._chunk(last))
        if self.include_usage:
            usage = self.usage()
            usage.pop("prompt_tokens_details", None)
            chunks.append(self._chunk([], usage=usage))
        return chunks

    def completion(self) -> dict[str, Any]:
        choices = []
        for c in self.choices:
            content: str | None = "".join(c.content)
            if c.mode in ("named", "required"):
                content = content or ""  # as vLLM for forced calls
            elif c.tool_calls and not content:
                content = None
            choices.append(
                {
                    "index": c.index,
                    "message": {"role": "assistant", "reasoning_content": None, "content": content, "tool_calls": c.tool_calls},
                    "logprobs": {"content": c.logprobs} if self.with_logprobs else None,
                    "finish_reason": c.finish_reason,
                    "stop_reason": c.stop_reason,
                }
            )
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model_id,
            "choices": choices,
            "usage": self.usage(),
            "prompt_logprobs": None,
        }
