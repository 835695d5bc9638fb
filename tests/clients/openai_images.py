"""Drives a coordinator's image API with the official `openai` Python client, unchanged: only
base_url and api_key point at infermine; infermine's extensions go in `extra_body`. Used by the
end-to-end suite (tests/tests/e2e/images.rs), which starts the coordinator and an agent serving
an image model and checks what this prints.

    python tests/clients/openai_images.py BASE_URL API_KEY MODEL SIZE STEPS

Prints one JSON object:
  - "b64": two images (n=2, b64_json, seed 1234): each PNG's SHA-256, size in bytes and the
    width and height its IHDR header gives, and the `infermine` object of the answer;
  - "again": the same request with n=1: its one image (the same seed, so the same bytes);
  - "url": an n=1 request answered with a link, and what fetching the link without any
    credentials gave (status, content type, the PNG's SHA-256);
  - "errors": the exception class, status, code and param the client raised for an unknown
    model, n=5, a size with an uppercase X and a wrong API key.
"""

import base64
import hashlib
import json
import struct
import sys
import urllib.request

import openai

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def describe(png: bytes) -> dict:
    width = height = None
    if png.startswith(PNG_SIGNATURE) and png[12:16] == b"IHDR":
        width, height = struct.unpack(">II", png[16:24])
    return {
        "sha256": hashlib.sha256(png).hexdigest(),
        "bytes": len(png),
        "width": width,
        "height": height,
    }


def error_of(call) -> list:
    try:
        call()
    except openai.APIStatusError as e:
        body = e.body if isinstance(e.body, dict) else {}
        return [type(e).__name__, e.status_code, body.get("code"), body.get("param")]
    return ["no error"]


def main() -> None:
    base, key, model, size, steps = sys.argv[1:6]
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=300)
    extra = {"seed": 1234, "steps": int(steps)}
    if "flux" not in model:
        # Flux.1-dev runs without classifier-free guidance and refuses negative prompts.
        extra["negative_prompt"] = "blurry"

    two = client.images.generate(model=model, prompt="a lighthouse at dusk", n=2, size=size, extra_body=extra)
    again = client.images.generate(model=model, prompt="a lighthouse at dusk", n=1, size=size, extra_body=extra)
    linked = client.images.generate(
        model=model,
        prompt="a lighthouse at dawn",
        size=size,
        response_format="url",
        extra_body={"steps": int(steps)},
    )
    with urllib.request.urlopen(linked.data[0].url) as response:
        fetched = {
            "status": response.status,
            "content_type": response.headers.get("content-type"),
            **describe(response.read()),
        }

    errors = {
        "unknown_model": error_of(lambda: client.images.generate(model="dall-e-3", prompt="a cat")),
        "too_many": error_of(lambda: client.images.generate(model=model, prompt="a cat", n=5)),
        "bad_size": error_of(lambda: client.images.generate(model=model, prompt="a cat", size="512X512")),
        "wrong_key": error_of(
            lambda: openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0).images.generate(
                model=model, prompt="a cat"
            )
        ),
    }

    print(
        json.dumps(
            {
                "client_version": openai.__version__,
                "b64": {
                    "created": two.created,
                    "images": [describe(base64.b64decode(d.b64_json)) for d in two.data],
                    "urls": [d.url for d in two.data],
                    "infermine": getattr(two, "infermine", None),
                },
                "again": {
                    "images": [describe(base64.b64decode(d.b64_json)) for d in again.data],
                    "infermine": getattr(again, "infermine", None),
                },
                "url": {
                    "url": linked.data[0].url,
                    "b64_json": linked.data[0].b64_json,
                    "fetched": fetched,
                    "infermine": getattr(linked, "infermine", None),
                },
                "errors": errors,
            }
        )
    )


if __name__ == "__main__":
    main()
