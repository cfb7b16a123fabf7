#!/usr/bin/env python3
"""Drives `mlstack infer serve` with the clients people actually use:
Python grpcio (stubs compiled from proto/ at run time with grpcio-tools) and
the `openai` package pointed at the HTTP API. Exits non-zero on any mismatch.

  python3 tests/python/infer_clients.py --grpc HOST:PORT --http http://HOST:PORT --proto-dir proto/proto

With --ca CA.pem --api-key KEY the server is expected to serve TLS on both
ports and require that key: the same clients over TLS (grpcio's SSL channel
credentials, openai on its own HTTP client trusting CA.pem) get the same answers,
and plaintext, an untrusted certificate or a missing key are refused.
"""
import argparse
import importlib
import os
import ssl
import sys
import tempfile

import grpc
import openai
from grpc_tools import protoc

# llama.cpp's greedy continuation of "The capital of France is" (12 tokens),
# from infer/tests/data/llamacpp_golden.json.
FRANCE = " Paris.\n\nThe United States has a population of approximately"


def stubs(proto_dir):
    out = tempfile.mkdtemp()
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}",
                      "mlstack/infer/v1/infer.proto"])
    assert rc == 0, f"protoc failed: {rc}"
    sys.path.insert(0, out)
    pb = importlib.import_module("mlstack.infer.v1.infer_pb2")
    rpc = importlib.import_module("mlstack.infer.v1.infer_pb2_grpc")
    return pb, rpc


def grpc_checks(addr, proto_dir):
    pb, rpc = stubs(proto_dir)
    stub = rpc.InferenceStub(grpc.insecure_channel(addr))

    info = stub.ModelInfo(pb.ModelInfoRequest(), timeout=10)
    assert info.n_layers == 30 and info.n_kv_heads == 3 and info.vocab_size == 49152, info
    assert info.kv_block_size_tokens == 16 and info.kv_cache_bytes > 0, info

    ids = stub.Tokenize(pb.TokenizeRequest(text="Hello, world!"), timeout=10).token_ids
    assert list(ids) == [19556, 28, 905, 17], ids

    text, tokens, final = "", [], None
    req = pb.GenerateRequest(prompt="The capital of France is", max_tokens=12)
    for msg in stub.Generate(req, timeout=60):
        text += msg.text_delta
        tokens += list(msg.token_ids)
        if msg.HasField("usage"):
            final = msg
    assert text == FRANCE, repr(text)
    assert len(tokens) == 12 and final.finish_reason == pb.FINISH_REASON_LENGTH, final
    assert final.usage.prompt_tokens == 5 and final.usage.completion_tokens == 12, final.usage

    chat = pb.GenerateRequest(chat=pb.ChatList(messages=[pb.ChatMessage(role="user", content="Write a haiku about the ocean.")]),
                              max_tokens=64)
    haiku = "".join(m.text_delta for m in stub.Generate(chat, timeout=60))
    assert haiku.startswith("In the depths of the ocean, a silent beauty,\n"), repr(haiku)

    try:
        list(stub.Generate(pb.GenerateRequest(prompt="x", max_tokens=100000), timeout=10))
        raise AssertionError("an over-long request was accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "8192" in e.details(), (e.code(), e.details())

    try:
        list(stub.Generate(pb.GenerateRequest(prompt="Count from one to a thousand:", max_tokens=2000), timeout=0.3))
        raise AssertionError("the deadline was not enforced")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e.code()
    print("grpcio: ModelInfo, Tokenize, Generate (prompt, chat), INVALID_ARGUMENT, DEADLINE_EXCEEDED ok")


def openai_checks(base):
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused")
    models = client.models.list()
    assert len(models.data) == 1, models
    model = models.data[0].id

    c = client.completions.create(model=model, prompt="The capital of France is", max_tokens=12, temperature=0)
    assert c.choices[0].text == FRANCE and c.choices[0].finish_reason == "length", c
    assert c.usage.prompt_tokens == 5 and c.usage.completion_tokens == 12, c.usage

    messages = [{"role": "user", "content": "Write a haiku about the ocean."}]
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=64, temperature=0)
    full = r.choices[0].message.content
    assert full.startswith("In the depths of the ocean, a silent beauty,\n"), repr(full)
    assert r.choices[0].finish_reason == "stop", r

    streamed = ""
    chunks = 0
    for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=64, temperature=0, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            streamed += chunk.choices[0].delta.content
        chunks += 1
    assert streamed == full and chunks > 10, (chunks, streamed)

    s = client.chat.completions.create(model=model, messages=messages, max_tokens=64, temperature=0.8, seed=42, top_p=0.9)
    s2 = client.chat.completions.create(model=model, messages=messages, max_tokens=64, temperature=0.8, seed=42, top_p=0.9)
    assert s.choices[0].message.content == s2.choices[0].message.content, "seeded sampling is not reproducible"

    stop = client.completions.create(model=model, prompt="The capital of France is", max_tokens=30, temperature=0, stop=["United"])
    assert stop.choices[0].text == " Paris.\n\nThe ", repr(stop.choices[0].text)

    try:
        client.completions.create(model=model, prompt="x", max_tokens=100000)
        raise AssertionError("an over-long request was accepted")
    except openai.BadRequestError as e:
        assert "8192" in str(e), str(e)
    try:
        client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=-1)
        raise AssertionError("a negative temperature was accepted")
    except openai.BadRequestError as e:
        assert "temperature" in str(e), str(e)
    print("openai: models, completions, chat (plain, streamed, seeded), stop, 400 errors ok")


def tls_checks(addr, base, proto_dir, ca_path, key):
    """The server speaks TLS on both ports and requires `key`."""
    pb, rpc = stubs(proto_dir)
    with open(ca_path, "rb") as f:
        ca = f.read()
    auth = [("authorization", f"Bearer {key}")]
    secure = rpc.InferenceStub(grpc.secure_channel(addr, grpc.ssl_channel_credentials(root_certificates=ca)))
    info = secure.ModelInfo(pb.ModelInfoRequest(), metadata=auth, timeout=10)
    assert info.n_layers == 30, info
    req = pb.GenerateRequest(prompt="The capital of France is", max_tokens=12)
    text = "".join(m.text_delta for m in secure.Generate(req, metadata=auth, timeout=60))
    assert text == FRANCE, repr(text)
    try:
        secure.ModelInfo(pb.ModelInfoRequest(), timeout=10)
        raise AssertionError("a call without a key was answered")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e.code()
    try:
        rpc.InferenceStub(grpc.insecure_channel(addr)).ModelInfo(pb.ModelInfoRequest(), metadata=auth, timeout=5)
        raise AssertionError("a plaintext gRPC call was answered on the TLS port")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNAVAILABLE, e.code()
    print("grpcio over TLS: ModelInfo, Generate ok; no key UNAUTHENTICATED; plaintext refused")

    # openai's own HTTP client class (httpx or its successor, whichever this
    # openai version uses), trusting the development CA.
    trusted = openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=ca_path))
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, http_client=trusted, max_retries=0)
    c = client.completions.create(model="m", prompt="The capital of France is", max_tokens=12, temperature=0)
    assert c.choices[0].text == FRANCE, c
    try:
        openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", http_client=trusted, max_retries=0).models.list()
        raise AssertionError("a wrong key was answered")
    except openai.AuthenticationError as e:
        assert e.status_code == 401, e
    # The system trust store does not hold the development CA.
    try:
        openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0).models.list()
        raise AssertionError("a certificate of an untrusted CA was accepted")
    except openai.APIConnectionError:
        pass
    plain = base.replace("https://", "http://", 1)
    try:
        openai.OpenAI(base_url=f"{plain}/v1", api_key=key, max_retries=0, timeout=5).models.list()
        raise AssertionError("plaintext HTTP was answered on the HTTPS port")
    except (openai.APIConnectionError, openai.APIStatusError):
        pass
    print("openai over HTTPS: completion ok; wrong key 401; untrusted CA and plaintext refused")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--grpc", required=True)
    ap.add_argument("--http", required=True)
    ap.add_argument("--proto-dir", required=True)
    ap.add_argument("--ca")
    ap.add_argument("--api-key")
    a = ap.parse_args()
    if a.ca:
        tls_checks(a.grpc, a.http, os.path.abspath(a.proto_dir), a.ca, a.api_key)
        return
    grpc_checks(a.grpc, os.path.abspath(a.proto_dir))
    openai_checks(a.http)


if __name__ == "__main__":
    main()
