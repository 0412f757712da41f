"""PyTorch + PEFT (+ bitsandbytes) trainer baseline for `edge-eval bench-train` (issue 21).

Builds transformers' LlamaForCausalLM with the shape of one of edge-eval's synthetic
architectures (random weights, a bf16 base), puts LoRA adapters on all seven projections
(`--rank`, `--alpha`, `--dropout`) and trains `--steps` optimizer steps of `--batch` random
sequences of `--seq` tokens (labels = input ids: the loss over every position after the first),
with AdamW (`--lr`, no weight decay) — after `--warmup` unmeasured steps, exactly as
`edge-eval bench-train` does. `--method qlora` quantizes the base to NF4 with bitsandbytes (blocks
of 64, double-quantized scales, bf16 compute), as the QLoRA recipe.

Energy: NVML's total-energy counter (nvmlDeviceGetTotalEnergyConsumption) around the measured
steps, with an idle baseline of `--idle` s before and after (net = gross - idle power x time), as
edge-eval's meter. Memory: NVML's device memory in use, sampled every 20 ms (device-wide, as
edge-eval reports it), and torch's own peak allocation beside it.

`--cpu` trains on the CPU instead (f32 throughout, `--threads` threads, LoRA only; no energy
counter is read: energy is null, memory is the peak RSS), beside `edge-eval bench-train --device
cpu`.

Prints one JSON object with the keys `edge-eval bench-train --json` prints.

    python benches/peft_train.py --shape llama-3.2-1b --method qlora --checkpointing
"""

import argparse
import ctypes
import json
import tempfile
import threading
import time

import torch

from shapes import SHAPES

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class Nvml:
    """The few NVML calls needed, through the driver's library (no Python package)."""

    def __init__(self, index):
        self.lib = ctypes.CDLL("libnvidia-ml.so.1")
        assert self.lib.nvmlInit_v2() == 0, "nvmlInit failed"
        self.handle = ctypes.c_void_p()
        assert self.lib.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(self.handle)) == 0

    def joules(self):
        mj = ctypes.c_ulonglong()
        assert self.lib.nvmlDeviceGetTotalEnergyConsumption(self.handle, ctypes.byref(mj)) == 0
        return mj.value / 1e3

    def memory_used(self):
        class Mem(ctypes.Structure):
            _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong),
                        ("used", ctypes.c_ulonglong)]

        m = Mem()
        assert self.lib.nvmlDeviceGetMemoryInfo(self.handle, ctypes.byref(m)) == 0
        return m.used

    def idle_power(self, seconds):
        e0, t0 = self.joules(), time.perf_counter()
        time.sleep(seconds)
        return (self.joules() - e0) / (time.perf_counter() - t0)


class PeakSampler(threading.Thread):
    """NVML memory in use every 20 ms; `peak` is the highest seen."""

    def __init__(self, nvml):
        super().__init__(daemon=True)
        self.nvml, self.peak, self.done = nvml, nvml.memory_used(), threading.Event()

    def run(self):
        while not self.done.wait(0.02):
            self.peak = max(self.peak, self.nvml.memory_used())


def build(args):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    config = LlamaConfig(**SHAPES[args.shape])
    model = LlamaForCausalLM(config)
    if args.cpu:
        pass  # f32, on the CPU (LoRA only)
    elif args.method == "qlora":
        from transformers import BitsAndBytesConfig

        model = model.to(torch.bfloat16)
        folder = tempfile.mkdtemp(prefix="peft-train-")
        model.save_pretrained(folder)
        del model
        model = LlamaForCausalLM.from_pretrained(
            folder,
            dtype=torch.bfloat16,
            device_map={"": args.gpu},
            quantization_config=BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16,
            ),
        )
    else:
        model = model.to(torch.bfloat16).to(f"cuda:{args.gpu}")
    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.config.use_cache = False
    lora = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=args.dropout,
                      target_modules=TARGETS, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    model.train()
    return model


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m")
    p.add_argument("--method", choices=["lora", "qlora"], default="lora")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--dropout", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--checkpointing", action="store_true")
    p.add_argument("--idle", type=float, default=1.0)
    p.add_argument("--gpu", type=int, default=0)
    p.add_argument("--cpu", action="store_true", help="train on the CPU in f32 (LoRA only)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (with --cpu)")
    args = p.parse_args()
    if args.cpu:
        if args.method != "lora":
            p.error("--cpu trains LoRA only (bitsandbytes' NF4 needs a GPU)")
        torch.set_num_threads(args.threads)
    device = "cpu" if args.cpu else f"cuda:{args.gpu}"

    nvml = None if args.cpu else Nvml(args.gpu)
    model = build(args)
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(7)
    vocab = SHAPES[args.shape]["vocab_size"]
    data = [torch.randint(0, vocab, (args.batch, args.seq), generator=g).to(device)
            for _ in range(4)]

    def step(i):
        ids = data[i % len(data)]
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for i in range(args.warmup):
        step(i)
    if nvml:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        idle_before = nvml.idle_power(args.idle) if args.idle > 0 else None
        sampler = PeakSampler(nvml)
        sampler.start()
        e0 = nvml.joules()
    losses, step_s = [], []
    t0 = time.perf_counter()
    for i in range(args.steps):
        ts = time.perf_counter()
        losses.append(step(i).item())  # .item() waits for the step, as edge-eval's loss read
        step_s.append(time.perf_counter() - ts)
    if nvml:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    gross = nvml.joules() - e0 if nvml else None
    tokens = args.steps * args.batch * args.seq
    step_s.sort()
    import peft
    import transformers

    versions = f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}"
    if args.method == "qlora":
        import bitsandbytes

        versions += f", bitsandbytes {bitsandbytes.__version__}"
    row = {
        "engine": "peft",
        "versions": versions,
        "model": args.shape,
        "method": args.method,
        "quant": "nf4" if args.method == "qlora" else None,
        "dtype": "f32" if args.cpu else "bf16",
        "device": "cpu" if args.cpu else f"cuda({args.gpu})",
        "threads": torch.get_num_threads() if args.cpu else None,
        "batch": args.batch,
        "seq": args.seq,
        "grad_accum": 1,
        "checkpointing": args.checkpointing,
        "rank": args.rank,
        "alpha": args.alpha,
        "dropout": args.dropout,
        "lr": args.lr,
        "steps": args.steps,
        "warmup": args.warmup,
        "trainable_params": sum(q.numel() for q in params),
        "seconds": seconds,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "step_s_median": step_s[len(step_s) // 2],
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }
    if nvml is None:
        import resource

        row.update({
            "j_per_token": None,
            "j_per_token_net": None,
            "energy_j": None,
            "energy_source": None,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "meter": "none on the CPU: no energy counter is read; memory: peak RSS",
        })
    else:
        sampler.done.set()
        sampler.join()
        idle_after = nvml.idle_power(args.idle) if args.idle > 0 else None
        idle = None if idle_before is None else (idle_before + idle_after) / 2
        row.update({
            "j_per_token": gross / tokens,
            "j_per_token_net": None if idle is None else (gross - idle * seconds) / tokens,
            "energy_j": gross,
            "idle_power_w": idle,
            "energy_source": "counter",
            "gpu_memory_peak_bytes": sampler.peak,
            "torch_max_allocated_bytes": torch.cuda.max_memory_allocated(),
            "meter": "NVML total-energy counter; memory: NVML device memory in use every 20 ms",
        })
    print(json.dumps(row))


if __name__ == "__main__":
    main()
