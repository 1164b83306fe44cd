"""The JS call `Azion.AI.run(modelId, payload)`, in Python."""

from _setup import QWEN, make_client

with make_client() as ai:
    completion = ai.run(QWEN, {
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Name the european capitals"},
        ],
        "max_tokens": 64,
    })
    print(completion.choices[0].message.content)
    print(completion.usage)
