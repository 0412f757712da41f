"""A tensor quantized by bitsandbytes' NF4, as the fixture `crates/runtime/src/lora/nf4.rs`'s test
`bitsandbytes_quantizes_the_fixture_as_we_do` compares edge-eval's NF4 against, byte for byte.

    python benches/nf4_bnb_fixture.py OUT.safetensors      (on a GPU machine with bitsandbytes)

A deterministic 97 × 200 f32 matrix (19,400 values: 303 full blocks of 64 and a partial one, and
two blocks of 256 scales, the second partial) through
`bitsandbytes.functional.quantize_4bit(W, blocksize=64, quant_type="nf4",
compress_statistics=True)`. Saved: the input `weight`, bitsandbytes' `packed` bytes, its 8-bit
scale codes `absmax` with their per-256 absmax `absmax2` and mean `offset`, its code book `code`,
and its own dequantization `dequantized`.
"""

import sys

import bitsandbytes
import bitsandbytes.functional as F
import torch
from safetensors.torch import save_file

g = torch.Generator().manual_seed(21)
# Heavy-ish tails and rows of different scale, as weights have.
w = torch.randn(97, 200, generator=g) * torch.linspace(0.01, 0.2, 97).unsqueeze(1)
w[3, 7] = 1.5  # an outlier: its block's scale is set by it
packed, state = F.quantize_4bit(w.cuda(), blocksize=64, quant_type="nf4", compress_statistics=True)
dequantized = F.dequantize_4bit(packed, state).float().cpu()
save_file(
    {
        "weight": w.contiguous(),
        "packed": packed.flatten().cpu().contiguous(),
        "absmax": state.absmax.cpu().contiguous(),
        "absmax2": state.state2.absmax.float().cpu().contiguous(),
        "offset": state.offset.float().reshape(1).cpu(),
        "code": state.code.float().cpu().contiguous(),
        "dequantized": dequantized.contiguous(),
    },
    sys.argv[1],
    metadata={"bitsandbytes": bitsandbytes.__version__, "torch": torch.__version__},
)
print(f"wrote {sys.argv[1]}: bitsandbytes {bitsandbytes.__version__}, {packed.numel()} packed bytes, "
      f"{state.absmax.numel()} scale codes, {state.state2.absmax.numel()} second-level scales")
