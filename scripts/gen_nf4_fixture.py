#!/usr/bin/env python3
"""Golden NF4 fixtures from bitsandbytes' own functions (tests/test_nf4.cpp reads them).

Run in the fixture venv:  /opt/frugal-venv/bin/python scripts/gen_nf4_fixture.py
Writes tests/fixtures/nf4/index.json plus raw little-endian .bin files:
  - 4-bit cases: bitsandbytes.functional.quantize_4bit(quant_type='nf4') with
    compress_statistics True/False, blocksizes 32/64/128/4096, on seeded torch.randn inputs
    (fp32 and bf16; odd numel; partial last blocks; > 256 blocks so the nested absmax has
    several blocks; outliers, an all-zero block and exact zeros), with the packed codes, the
    absmax (fp32, or u8 codes + nested fp32 absmax + offset), bnb's dequantized absmax and
    bnb's dequantize_4bit output (fp32 or bf16).
  - dyn8: bitsandbytes' CPU quantize_blockwise (the nested-absmax quantizer) on its own.
  - means: torch.mean (fp32, 1 thread) of a deterministic sequence the C++ test regenerates.
  - maps: the NF4 code book and create_dynamic_map(signed=True) as fp32 bit patterns.
torch runs single-threaded: absmax.mean() is then a fixed reduction order (see
quant::torch_mean_f32); with several threads torch splits sums over 32768 elements.
"""
import copy
import json
import os

import numpy as np
import torch

import bitsandbytes.functional as F

torch.set_num_threads(1)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "nf4")
os.makedirs(OUT, exist_ok=True)
index = {"generator": "scripts/gen_nf4_fixture.py",
         "versions": {"torch": torch.__version__, "bitsandbytes": __import__("bitsandbytes").__version__},
         "cases": [], "dyn8": [], "means": []}


def write(name, t):
    """Raw little-endian bytes of a tensor; bf16 as its uint16 bit pattern."""
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        arr = t.view(torch.int16).numpy().view(np.uint16)
    else:
        arr = t.numpy()
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(arr.astype(arr.dtype.newbyteorder("<")).tobytes())
    return name


def f32_bits(v):
    return int(np.array([v], dtype=np.float32).view(np.uint32)[0])


def add_case(tag, x, blocksize, dq, out_dtype):
    name = f"{tag}_bs{blocksize}_{'dq' if dq else 'nodq'}"
    packed, st = F.quantize_4bit(x, blocksize=blocksize, compress_statistics=dq, quant_type="nf4")
    st_out = copy.copy(st)
    st_out.dtype = out_dtype
    deq = F.dequantize_4bit(packed, st_out, quant_type="nf4")
    case = {"name": name, "input": f"{tag}_input.bin",
            "input_dtype": "bf16" if x.dtype == torch.bfloat16 else "f32",
            "shape": list(x.shape), "blocksize": blocksize, "double_quant": dq,
            "packed": write(f"{name}_packed.bin", packed.flatten()),
            "dequant": write(f"{name}_dequant.bin", deq.flatten()),
            "dequant_dtype": "bf16" if out_dtype == torch.bfloat16 else "f32"}
    if dq:
        absmax = F.dequantize_blockwise(st.absmax, st.state2) + st.offset  # as dequantize_4bit does
        case.update({"absmax_q": write(f"{name}_absmax_q.bin", st.absmax),
                     "nested_absmax": write(f"{name}_nested_absmax.bin", st.state2.absmax),
                     "nested_blocksize": st.state2.blocksize,
                     "offset_bits": f32_bits(st.offset.item()),
                     "absmax_deq": write(f"{name}_absmax_deq.bin", absmax)})
        assert st.state2.blocksize == 256 and torch.equal(st.state2.code, F.create_dynamic_map())
    else:
        case["absmax"] = write(f"{name}_absmax.bin", st.absmax)
    index["cases"].append(case)


# A: bf16 weights, 130x130 = 16900 elements = 264 full blocks of 64 + 4: 265 blocks > 256, so
#    the nested absmax has 2 blocks (the second partial).
g = torch.Generator().manual_seed(1)
xa = (torch.randn(130, 130, generator=g) * 0.02).to(torch.bfloat16)
write("a_input.bin", xa)
add_case("a", xa, 64, True, torch.bfloat16)
add_case("a", xa, 64, False, torch.bfloat16)

# B: fp32, 59x111 = 6549 elements (odd numel: padded nibble), blocksize 128 -> 51 full blocks
#    + a partial one of 21 elements.
g = torch.Generator().manual_seed(2)
xb = torch.randn(59, 111, generator=g)
write("b_input.bin", xb)
add_case("b", xb, 128, True, torch.float32)
add_case("b", xb, 128, False, torch.bfloat16)

# C: fp32, 61x64 = 3904 elements with outliers, an all-zero block, exact zeros, and values on
#    the NF4 midpoints (times the block absmax, which is 1 there: ties go to the lower code).
g = torch.Generator().manual_seed(3)
xc = torch.randn(61, 64, generator=g)
pos = torch.randint(0, xc.numel(), (40,), generator=g)
xc.view(-1)[pos] *= 50.0
xc[5, :] = 0.0                      # one whole block of zeros (blocksize 64)
xc[7, ::3] = 0.0
code = F.get_4bit_type("nf4", device="cpu")
mids = (code[:-1] + code[1:]) / 2
xc[9, :15] = mids
xc[9, 15] = 1.0                     # absmax of that block is exactly 1
xc[9, 16:31] = -mids
write("c_input.bin", xc)
add_case("c", xc, 64, True, torch.float32)
add_case("c", xc, 64, False, torch.bfloat16)
add_case("c", xc, 32, True, torch.bfloat16)
add_case("c", xc, 4096, False, torch.bfloat16)  # one partial block of 3904 elements

# D: rounding edges of the 4-bit scaling. bitsandbytes scales full blocks by x * (1/absmax) but
#    the partial last block by x / absmax; collect values near absmax * midpoint where the two
#    give different codes, and put them in full blocks and in the partial last block.
am = np.float32(2.3456789)
inv = np.float32(1) / am
mid_np = mids.numpy()
edge = []
for m in mid_np:
    c = np.float32(m) * am
    for k in range(-1000, 1001):
        xv = np.float32(c + np.float32(k) * np.spacing(c))
        s_mul = np.clip(np.float32(xv * inv), -1, 1)
        s_div = np.clip(np.float32(xv / am), -1, 1)
        if np.sum(mid_np < s_mul) != np.sum(mid_np < s_div):
            edge.append(xv)
edge = np.array(edge, dtype=np.float32)
assert len(edge) >= 4, len(edge)
g = torch.Generator().manual_seed(5)
nfull = 3
xd4 = (torch.rand(64 * nfull + 37, generator=g) * 2 - 1) * 2.0  # |x| < am everywhere
for b in range(nfull + 1):
    s0 = 64 * b
    xd4[s0] = float(am)
    k = min(len(edge), 36)
    xd4[s0 + 1:s0 + 1 + k] = torch.from_numpy(edge[(np.arange(k) + 7 * b) % len(edge)])
write("d_input.bin", xd4)
add_case("d", xd4, 64, False, torch.float32)
add_case("d", xd4, 64, True, torch.float32)
index["d_edge_values"] = int(len(edge))

# dyn8: bitsandbytes' blockwise 8-bit quantization with the dynamic map (CPU native kernel).
g = torch.Generator().manual_seed(4)
dmap = F.create_dynamic_map()
dmid = (dmap[:-1] + dmap[1:]) / 2
xd = torch.cat([torch.randn(1500, generator=g), dmid, dmap, torch.zeros(256),
                torch.rand(700, generator=g) * 1e-4, torch.randn(555, generator=g) * 3.0])
qd, amd = torch.ops.bitsandbytes.quantize_blockwise.default(xd, dmap, 256)
index["dyn8"].append({"input": write("dyn8_input.bin", xd), "n": xd.numel(), "blocksize": 256,
                      "codes": write("dyn8_codes.bin", qd), "absmax": write("dyn8_absmax.bin", amd)})

# means: x[i] = float32((i * 7919) % 10007) / 10007 + 1 (regenerated in C++), torch.mean bits.
for n in [1, 7, 17, 100, 1000, 5003, 70001, 16777259]:
    i = torch.arange(n, dtype=torch.int64)
    x = ((i * 7919) % 10007).to(torch.float32) / torch.tensor(10007.0) + 1.0
    index["means"].append({"n": n, "mean_bits": f32_bits(x.mean().item())})

index["maps"] = {"nf4_bits": [f32_bits(v) for v in code.tolist()],
                 "dyn8_bits": [f32_bits(v) for v in dmap.tolist()]}

with open(os.path.join(OUT, "index.json"), "w") as f:
    json.dump(index, f, indent=1)
total = sum(os.path.getsize(os.path.join(OUT, p)) for p in os.listdir(OUT))
print(f"wrote {len(os.listdir(OUT))} files, {total} bytes to {os.path.normpath(OUT)}")
