#!/usr/bin/env python3
"""Asks the compose stack's inference server a question from the host with
the `openai` package (the client people use), non-streaming and streaming.
Prints one JSON line with what it got; exits non-zero on any mismatch.

  python3 tests/python/compose_client.py --http http://127.0.0.1:8080 --model kv://models/compose/latest
"""
import argparse
import json
import sys

import openai


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--http", required=True)
    ap.add_argument("--model", required=True)
    a = ap.parse_args()
    client = openai.OpenAI(base_url=a.http + "/v1", api_key="unused", max_retries=0, timeout=120)

    models = [m.id for m in client.models.list().data]
    assert models, "GET /v1/models listed no model"

    prompt = "To be, or not to be"
    r = client.completions.create(model=models[0], prompt=prompt, max_tokens=16, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason in ("length", "stop"), choice
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0, r.usage

    # Streaming: the same greedy continuation, piece by piece.
    pieces = []
    for chunk in client.completions.create(model=models[0], prompt=prompt, max_tokens=16,
                                           temperature=0, stream=True):
        if chunk.choices:
            pieces.append(chunk.choices[0].text or "")
    streamed = "".join(pieces)
    assert streamed == choice.text, (streamed, choice.text)

    print(json.dumps({"models": models, "prompt": prompt, "text": choice.text,
                      "completion_tokens": r.usage.completion_tokens}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
