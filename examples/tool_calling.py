"""A complete tool loop: the model asks for a tool, the tool runs, the result goes back, final answer.

With the tiny random-weight demo checkpoints the model rarely asks for the tool; with the real
Qwen2.5-VL weights (or Azion) it does.
"""

import json

from _setup import QWEN, make_client

TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a location",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    },
}]


def get_weather(location: str) -> str:
    return json.dumps({"location": location, "temperature_c": 12, "sky": "cloudy"})


with make_client() as ai:
    messages = [
        {"role": "system", "content": "You are a helpful assistant with access to tools."},
        {"role": "user", "content": "What is the weather in London?"},
    ]
    for _ in range(3):  # a bounded loop: at most three tool rounds
        completion = ai.run(QWEN, {"messages": messages, "tools": TOOLS, "max_tokens": 128})
        message = completion.choices[0].message
        if not message.tool_calls:
            print("answer:", message.content)
            break
        messages.append({"role": "assistant", "content": message.content, "tool_calls": [c.model_dump() for c in message.tool_calls]})
        for call in message.tool_calls:
            args = json.loads(call.function.arguments)
            print(f"tool call: {call.function.name}({args})")
            messages.append({"role": "tool", "tool_call_id": call.id, "content": get_weather(**args)})
