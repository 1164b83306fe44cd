"""Stream an answer chunk by chunk, then get the whole completion from the same stream."""

from _setup import INTERNVL, make_client

with make_client() as ai:
    payload = {"stream": True, "stream_options": {"include_usage": True}, "messages": [{"role": "user", "content": "Name the european capitals"}], "max_tokens": 48}
    with ai.run(INTERNVL, payload) as stream:
        for chunk in stream:
            for choice in chunk.choices:
                print(choice.delta.content or "", end="", flush=True)
        print()
        final = stream.get_final_completion()
    print("finish_reason:", final.choices[0].finish_reason, "| usage:", final.usage)
