"""The same with AsyncAI: `await` the call, then `async for` over the chunks."""

import asyncio

from _setup import QWEN, make_async_client


async def main() -> None:
    async with make_async_client() as aai:
        stream = await aai.run(QWEN, {"stream": True, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 32})
        async with stream:
            async for piece in stream.iter_text():
                print(piece, end="", flush=True)
        print()


asyncio.run(main())
