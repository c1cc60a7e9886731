#!/usr/bin/env python3
"""Golden 8-bit blockwise fixture from bitsandbytes (tests/test_blockwise8.cpp).

Run in the fixture venv:  /opt/frugal-venv/bin/python scripts/gen_blockwise8_fixture.py
Writes tests/fixtures/blockwise8/blockwise8.safetensors (fp32):
  map_unsigned  [256]  bnb.functional.create_dynamic_map(signed=False)  (the v map)
  map_signed    [256]  create_dynamic_map(signed=True)  (bnb's; ours replaces one entry by -1.0)
  x             [1024] four blocks of v-like values (>= 0): squared Gaussians; squared Gaussians
                       times 10^U(-9, 0) (many orders of magnitude in one block); uniform [0, 1);
                       zeros with one value
  codes         [1024] bnb.functional.quantize_blockwise(x, code=map_unsigned, blocksize=256) codes
  absmax        [4]    its absmax
bnb 0.50 on the CPU quantizes through a 65536-entry lookup table over [-1, 1] (csrc/cpu_ops.cpp),
not by the nearest map entry: a scaled value below ~1.5e-5 is not resolved. The test compares
our nearest codes with these exactly where the table resolves the nearest entry (see there).
"""
import os

import numpy as np
import torch
from safetensors.numpy import save_file

import bitsandbytes.functional as F

torch.set_num_threads(1)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "blockwise8")
os.makedirs(OUT, exist_ok=True)

g = torch.Generator().manual_seed(8)
b0 = torch.randn(256, generator=g) ** 2
b1 = torch.randn(256, generator=g) ** 2 * 10.0 ** (-9 * torch.rand(256, generator=g))
b2 = torch.rand(256, generator=g)
b3 = torch.zeros(256)
b3[37] = 3.5e-3
x = torch.cat([b0, b1, b2, b3]).float()

mu = F.create_dynamic_map(signed=False).float()
ms = F.create_dynamic_map(signed=True).float()
codes, state = F.quantize_blockwise(x, code=mu, blocksize=256)
save_file({
    "map_unsigned": mu.numpy(),
    "map_signed": ms.numpy(),
    "x": x.numpy(),
    "codes": codes.numpy().astype(np.float32),
    "absmax": state.absmax.float().numpy(),
}, os.path.join(OUT, "blockwise8.safetensors"))
print("wrote", os.path.join(OUT, "blockwise8.safetensors"))
