"""The local backend explicitly: weights in this process, preloaded, freed by close()."""

from azion_ai import AI

from _setup import INTERNVL, QWEN, local_models

ai = AI(backend="local", models=local_models(), device="auto", max_image_pixels=512 * 28 * 28, max_image_tiles=6)
ai.transport.load(QWEN)  # load now rather than on the first request
for model_id in (QWEN, INTERNVL):
    completion = ai.run(model_id, {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 16, "temperature": 0})
    print(model_id, "->", repr(completion.choices[0].message.content))
ai.close()  # stops the workers and frees the models' memory
