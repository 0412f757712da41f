#!/usr/bin/env python3
"""Writes crates/runtime/tests/fixtures/chat/*.json: chat templates rendered by transformers'
own Jinja renderer (`render_jinja_template`, what `apply_chat_template` calls), for the tests of
`runtime::chat` to hold edge-eval's rendering to, and the quickstart's qa prompts (the first 20 of tasks/squad-rag.jsonl) tokenized by
transformers from SmolLM2's GGUF (`apply_chat_template(..., tokenize=True)`).

    pip install transformers gguf jinja2 sentencepiece   # torch is needed only for --tokens
    python3 tools/chat_fixtures.py [--tokens]

Templates: SmolLM2-135M-Instruct's and Qwen2's from their GGUF files (`bash .ci/fetch-models.sh`
fetches them), Llama 3.2's and Gemma 3's as published (written into the fixture).
"""
import json, os, sys
from pathlib import Path

from gguf import GGUFReader
from transformers.utils.chat_template_utils import render_jinja_template

root = Path(__file__).resolve().parent.parent
out = root / "crates/runtime/tests/fixtures/chat"
cache = Path(os.environ.get("EDGE_EVAL_MODELS", Path.home() / ".cache/edge-eval"))


def gguf_template(path):
    r = GGUFReader(path)
    def s(key):
        f = r.fields[key]
        return bytes(f.parts[f.data[0]]).decode()
    tokens = r.fields["tokenizer.ggml.tokens"]
    def tok(key):
        f = r.fields.get(key)
        if f is None:
            return ""
        i = int(f.parts[f.data[0]][0])
        return bytes(tokens.parts[tokens.data[i]]).decode()
    return s("tokenizer.chat_template"), tok("tokenizer.ggml.bos_token_id"), tok("tokenizer.ggml.eos_token_id")


LLAMA32 = (root / "tools/templates/llama-3.2.jinja").read_text()
GEMMA3 = (root / "tools/templates/gemma-3.jinja").read_text()

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a prime."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a joke."}],
    [{"role": "user", "content": "  spaces around, ünïcode, and a\nnewline  "}],
]

TEMPLATES = {
    "smollm2": lambda: gguf_template(cache / "models/SmolLM2-135M-Instruct.Q4_1.gguf"),
    "qwen2": lambda: gguf_template(cache / "llama-vocab/ggml-vocab-qwen2.gguf"),
    "llama-3.2": lambda: (LLAMA32, "<|begin_of_text|>", "<|eot_id|>"),
    "gemma-3": lambda: (GEMMA3, "<bos>", "<eos>"),
}
# Variables a template reads besides the messages (Llama 3.2 writes today's date otherwise).
EXTRA = {"llama-3.2": {"date_string": "26 Jul 2024"}}

for name, get in TEMPLATES.items():
    template, bos, eos = get()
    extra = EXTRA.get(name, {})
    cases = []
    for conv in CONVERSATIONS:
        for gen in (True, False):
            text = render_jinja_template([conv], chat_template=template, add_generation_prompt=gen,
                                         bos_token=bos, eos_token=eos, **extra)[0][0]
            cases.append({"messages": conv, "add_generation_prompt": gen, "rendered": text})
    fixture = {"template": template, "bos_token": bos, "eos_token": eos, "variables": extra,
               "cases": cases}
    (out / f"{name}.json").write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {name}.json ({len(cases)} cases)")

if "--tokens" in sys.argv:
    from transformers import AutoTokenizer
    sys.path.insert(0, str(root / "tools"))
    model = cache / "models"
    tok = AutoTokenizer.from_pretrained(str(model), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    qa_template = ("Answer the question using a short phrase copied from the context.\n\n"
                   "Context: {context}\n\nQuestion: {question}")
    prompts = []
    for line in (root / "tasks/squad-rag.jsonl").read_text().splitlines()[:20]:
        r = json.loads(line)
        content = qa_template.replace("{context}", r["context"]).replace("{question}", r["question"])
        msgs = [{"role": "user", "content": content}]
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        if not isinstance(ids, list):  # transformers 5 returns a BatchEncoding
            ids = ids["input_ids"]
        prompts.append({"id": r["id"], "ids": list(ids)})
    (out / "smollm2-quickstart-qa-ids.json").write_text(json.dumps(prompts) + "\n")
    print(f"wrote smollm2-quickstart-qa-ids.json ({len(prompts)} prompts)")
