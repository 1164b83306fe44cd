"""Serve the local models over HTTP (what `azion-ai serve` runs) and call them with the official
`openai` package and with azion_ai's remote transport. The server binds to loopback."""

from azion_ai import AI
from azion_ai._server import BackgroundServer, ChatServer

from _setup import QWEN, local_models

server = ChatServer(local_models(), api_key="local-key")
with BackgroundServer(server.app) as running:
    for state in server.states.values():
        state.ready.wait()
    print("serving at", running.base_url)

    from openai import OpenAI

    client = OpenAI(base_url=running.base_url, api_key="local-key")
    reply = client.chat.completions.create(model=QWEN, messages=[{"role": "user", "content": "Hi"}], max_tokens=16, temperature=0)
    print("openai package:", repr(reply.choices[0].message.content))

    with AI(base_url=running.base_url, token="local-key") as ai:
        reply2 = ai.run(QWEN, {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 16, "temperature": 0})
        print("azion_ai remote:", repr(reply2.choices[0].message.content))
