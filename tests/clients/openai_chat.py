"""Drives a coordinator with the official `openai` Python client, unchanged: only base_url and
api_key point at infermine. Used by the end-to-end suite (tests/tests/e2e/openai_client.rs),
which starts the coordinator and a real agent serving a demo model and checks what this prints.

    python tests/clients/openai_chat.py BASE_URL API_KEY MODEL

Prints one JSON object: the models listed, a completion, the same request streamed, and the
exception classes the client raised for an unknown model and a wrong key.
"""

import json
import sys

import openai


def main() -> None:
    base, key, model = sys.argv[1:4]
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=120)
    messages = [
        {"role": "system", "content": "You are a lighthouse keeper."},
        {"role": "user", "content": "What do you see tonight?"},
    ]
    request = dict(model=model, messages=messages, max_tokens=24, temperature=0.8, top_p=0.95, seed=1234)

    listed = [m.id for m in client.models.list()]

    completion = client.chat.completions.create(**request)
    choice = completion.choices[0]

    pieces, finish_reason, usage, roles, chunk_ids = [], None, None, [], set()
    stream = client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        chunk_ids.add(chunk.id)
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        for c in chunk.choices:
            if c.delta.role:
                roles.append(c.delta.role)
            if c.delta.content:
                pieces.append(c.delta.content)
            if c.finish_reason:
                finish_reason = c.finish_reason

    errors = {}
    try:
        client.chat.completions.create(model="no-such-model", messages=messages)
    except openai.APIStatusError as e:
        errors["unknown_model"] = [type(e).__name__, e.status_code]
    try:
        openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0).chat.completions.create(
            model=model, messages=messages
        )
    except openai.APIStatusError as e:
        errors["wrong_key"] = [type(e).__name__, e.status_code]

    print(
        json.dumps(
            {
                "client_version": openai.__version__,
                "models": listed,
                "completion": {
                    "id": completion.id,
                    "object": completion.object,
                    "model": completion.model,
                    "content": choice.message.content,
                    "role": choice.message.role,
                    "finish_reason": choice.finish_reason,
                    "usage": completion.usage.model_dump(),
                },
                "stream": {
                    "pieces": pieces,
                    "roles": roles,
                    "finish_reason": finish_reason,
                    "usage": usage,
                    "chunk_ids": len(chunk_ids),
                },
                "errors": errors,
            }
        )
    )


if __name__ == "__main__":
    main()
