"""The official `openai` Python client against a running `bodega serve-lite` (run by tests/server.rs).

Usage: python tests/openai_client.py BASE_URL API_KEY
Exercises a streamed chat, a plain completion, the model list, and an error surfaced as the client's
own exception type. Exits non-zero with a message on the first failure.
"""
import sys

import openai

base_url, api_key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)

models = [m.id for m in client.models.list()]
assert models == ["smollm2-135m"], models

stream = client.chat.completions.create(
    model="smollm2-135m",
    messages=[{"role": "user", "content": "Write a haiku about the sea."}],
    temperature=0,
    max_tokens=12,
    stream=True,
    stream_options={"include_usage": True},
)
pieces, usage = [], None
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
    if chunk.usage:
        usage = chunk.usage
plain = client.chat.completions.create(
    model="smollm2-135m",
    messages=[{"role": "user", "content": "Write a haiku about the sea."}],
    temperature=0,
    max_tokens=12,
)
assert "".join(pieces) == plain.choices[0].message.content, (pieces, plain)
assert usage is not None and usage.completion_tokens == 12, usage

completion = client.completions.create(model="smollm2-135m", prompt="The capital of France is", max_tokens=4, temperature=0)
assert completion.choices[0].text.strip(), completion
assert completion.usage.prompt_tokens > 0

try:
    client.chat.completions.create(model="smollm2-135m", messages=[], max_tokens=4)
    raise SystemExit("an empty conversation was accepted")
except openai.BadRequestError as e:
    assert "must not be empty" in str(e), e

bad = openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0)
try:
    bad.models.list()
    raise SystemExit("a wrong key was accepted")
except openai.AuthenticationError:
    pass
print("openai client: ok")
