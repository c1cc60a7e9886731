#!/usr/bin/env python3
"""Golden safetensors files for tests/test_safetensors.cpp, written by the reference implementation
(PyPI safetensors + huggingface_hub), so our writer can be checked byte for byte and our reader
against files we did not write.

Run in the fixture venv:  /opt/frugal-venv/bin/python scripts/gen_safetensors_fixture.py
Writes tests/fixtures/safetensors/:
  golden.safetensors   safetensors.torch.save_file, metadata {"format": "pt"}
  sharded/             huggingface_hub.save_torch_state_dict, max_shard_size=600 bytes
  reference_verdicts.json  [mutation..., accepted] for 600 corruptions of golden.safetensors
                       (["byte", pos, value] or ["trunc", length]), accepted = whether
                       safetensors.deserialize (the reference reader) accepts the result
The tensor values follow closed formulas that the C++ test recomputes (all exactly representable
in their dtype), so the test does not take its expected values from the file it checks.
"""
import json
import os
import random
import shutil

import torch
from huggingface_hub import save_torch_state_dict
from safetensors import deserialize
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "safetensors")


def fval(i):
    # (i % 17 - 8) / 8: exact in F32, BF16 and F16
    return ((i % 17) - 8) * 0.125


def floats(n, dtype):
    return torch.tensor([fval(i) for i in range(n)], dtype=torch.float64).to(dtype)


def golden_tensors():
    # Names deliberately unsorted and dtypes mixed, so the writer's sort order is exercised.
    t = {}
    t["zeta.weight"] = floats(59, torch.float32).reshape(59)
    t["model.layers.10.mlp.up"] = floats(7 * 3, torch.bfloat16).reshape(7, 3)
    t["model.layers.2.mlp.up"] = floats(5, torch.bfloat16).reshape(5)
    t["alpha"] = floats(11, torch.float16).reshape(11)
    t["ids"] = torch.tensor([i * 1000003 - 5000000000 for i in range(9)], dtype=torch.int64)
    t["bytes"] = torch.tensor([(i * 37) % 256 for i in range(13)], dtype=torch.uint8)
    t["scalar"] = torch.tensor(2.5, dtype=torch.float32)          # shape []
    t["empty"] = torch.zeros((0, 3), dtype=torch.float32)          # shape [0, 3], 0 bytes
    t["\u00e9mbed"] = floats(3, torch.float32)                     # non-ASCII name
    return t


def reference_verdicts(good, n=600, seed=59):
    """Mutations of a valid file and whether the reference reader accepts each one."""
    rng = random.Random(seed)
    hdr_end = 8 + int.from_bytes(good[:8], "little")
    digits = [i for i in range(8, hdr_end) if chr(good[i]).isdigit()]
    cases = []
    for _ in range(n):
        kind = rng.choice(["byte", "byte", "digit", "digit", "trunc"])
        b = bytearray(good)
        if kind == "byte":  # any byte of the length field or header
            pos, val = rng.randrange(0, hdr_end), rng.randrange(256)
            b[pos] = val
            m = ["byte", pos, val]
        elif kind == "digit":  # a digit of a shape/offset: valid JSON, maybe inconsistent
            pos, val = rng.choice(digits), ord(str(rng.randrange(10)))
            b[pos] = val
            m = ["byte", pos, val]
        else:
            ln = rng.randrange(len(good) + 1)
            b = b[:ln]
            m = ["trunc", ln]
        try:
            deserialize(bytes(b))
            ok = True
        except Exception:
            ok = False
        cases.append(m + [ok])
    return cases


def main():
    os.makedirs(OUT, exist_ok=True)
    save_file(golden_tensors(), os.path.join(OUT, "golden.safetensors"), metadata={"format": "pt"})

    shard_dir = os.path.join(OUT, "sharded")
    shutil.rmtree(shard_dir, ignore_errors=True)
    os.makedirs(shard_dir)
    sd = {f"layer.{i}.w": floats(40 + i, torch.float32) for i in range(6)}
    sd["embed"] = floats(111, torch.bfloat16)
    save_torch_state_dict(sd, shard_dir, max_shard_size=600, metadata={"format": "pt"})
    with open(os.path.join(OUT, "golden.safetensors"), "rb") as f:
        verdicts = reference_verdicts(f.read())
    with open(os.path.join(OUT, "reference_verdicts.json"), "w") as f:
        json.dump(verdicts, f, separators=(",", ":"))
    print("verdicts:", sum(v[-1] for v in verdicts), "accepted of", len(verdicts))
    for f in sorted(os.listdir(shard_dir)):
        print(f, os.path.getsize(os.path.join(shard_dir, f)))


if __name__ == "__main__":
    main()
