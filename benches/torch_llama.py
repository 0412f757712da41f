"""PyTorch eager baseline for `edge-eval bench-model` on a GPU (issue 7's speed table).

Builds transformers' LlamaForCausalLM with the shape of `synthetic("llama-3.2-1b")` (random
weights, as edge-eval's synthetic model), and measures on the same GPU:

- prompt throughput: one forward of a `--prompt`-token prompt (logits of the last position only,
  as edge-eval's `forward_last`), median of `--repeats`;
- decode throughput at each `--batch`: greedy `generate` of `--gen` + 1 tokens minus `generate`
  of 1 token (so the prompt's prefill cancels out), eager with the static KV cache and with the
  default dynamic one, and with the static cache as transformers compiles it by default
  (torch.compile; not eager); median of `--repeats`;
- the device's memory bandwidth: a device-to-device copy of 2 GiB (bytes read + written / time),
  and the batch-1 decode limit it implies (bytes of the matrices read per token / bandwidth).

Usage (on the GPU machine, e.g. with /opt/torch/.venv/bin/python):
    python benches/torch_llama.py --dtype bf16 --batch 1,8 --prompt 512 --gen 128
"""

import argparse
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from shapes import SHAPES

SHAPE = SHAPES["llama-3.2-1b"]


def timed(f, repeats):
    f()  # warm-up
    xs = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        f()
        torch.cuda.synchronize()
        xs.append(time.perf_counter() - t)
    return statistics.median(xs)


def bandwidth(repeats):
    n = 2 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    s = timed(lambda: b.copy_(a), repeats)
    del a, b
    return 2 * n / s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", choices=["bf16", "f16"], default="bf16")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16}[a.dtype]
    torch.manual_seed(0)
    cfg = LlamaConfig(**SHAPE)
    torch.set_default_dtype(dtype)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).eval()
    torch.set_default_dtype(torch.float32)
    params = sum(p.numel() for p in model.parameters())
    # Per decode step the matrices are read whole: every layer's, plus the tied head (the
    # embedding table itself is only indexed).
    matrix_bytes = sum(
        p.numel() * p.element_size()
        for n, p in model.named_parameters()
        if p.dim() == 2 and "embed_tokens" not in n
    ) + model.lm_head.weight.numel() * model.lm_head.weight.element_size()
    bw = bandwidth(a.repeats)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, {a.dtype}")
    print(f"  params {params / 1e9:.3f} B, matrices read per decode step {matrix_bytes / 1e9:.3f} GB")
    print(f"  measured bandwidth (2 GiB device copy) {bw / 1e12:.2f} TB/s")
    print(f"  batch-1 decode limit {bw / matrix_bytes:.0f} tok/s")
    print(f"  GPU memory allocated after load {torch.cuda.memory_allocated() / 1e9:.3f} GB")

    ids = torch.randint(1000, 100000, (1, a.prompt), device="cuda")
    with torch.inference_mode():
        def pp():
            try:
                model(ids, logits_to_keep=1)
            except TypeError:
                model(ids)

        s = timed(pp, a.repeats)
        print(f"  pp{a.prompt}: {a.prompt / s:8.1f} tok/s")
        for b in [int(x) for x in a.batch.split(",")]:
            prompt = torch.randint(1000, 100000, (b, 8), device="cuda")
            mask = torch.ones_like(prompt)
            # transformers compiles the forward by itself when the cache is static, unless told
            # not to: "static, eager" is the eager baseline; the compiled one is shown beside it.
            for cache, extra in [
                ("static cache, eager", dict(cache_implementation="static", disable_compile=True)),
                ("dynamic cache, eager", {}),
                ("static cache, auto-compiled", dict(cache_implementation="static")),
            ]:
                kw = dict(
                    attention_mask=mask,
                    do_sample=False,
                    pad_token_id=0,
                    eos_token_id=None,
                    **extra,
                )

                def gen(n):
                    out = model.generate(prompt, max_new_tokens=n, min_new_tokens=n, **kw)
                    assert out.shape[1] == prompt.shape[1] + n, out.shape

                try:
                    long = timed(lambda: gen(a.gen + 1), a.repeats)
                    short = timed(lambda: gen(1), a.repeats)
                except Exception as e:  # report and go on (e.g. no static cache here)
                    print(f"  tg{a.gen} batch {b} ({cache}): failed: {e}")
                    continue
                step = (long - short) / a.gen
                print(
                    f"  tg{a.gen} batch {b} ({cache}): {b / step:8.1f} tok/s"
                    f"   ({step * 1000:.2f} ms/step)"
                )
        print(f"  peak GPU memory allocated {torch.cuda.max_memory_allocated() / 1e9:.3f} GB")


if __name__ == "__main__":
    main()
