"""Many requests at once with asyncio.gather: each gets its own answer, none mixed up."""

import asyncio

from _setup import INTERNVL, make_async_client


async def main() -> None:
    async with make_async_client() as aai:
        questions = [f"Tell me one fact about the number {i}" for i in range(8)]
        answers = await asyncio.gather(*(
            aai.run(INTERNVL, {"messages": [{"role": "user", "content": q}], "max_tokens": 16, "temperature": 0})
            for q in questions
        ))
        for q, a in zip(questions, answers):
            print(f"{q} -> {a.choices[0].message.content!r}")


asyncio.run(main())
