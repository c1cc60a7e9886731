#!/usr/bin/env python3
"""bench_vs_pytorch.py: QLoRA training-step throughput and peak memory, frugal vs PyTorch + PEFT.

Usage: /opt/frugal-venv/bin/python scripts/bench_vs_pytorch.py FRUGAL_BIN
           [--preset small|llama3-8b-2layers|tiny] [--seq-len 256] [--micro-batch 1] [--steps 5]
           [--rank 16] [--threads 2] [--quant nf4|none] [--also-bf16]
           [--omp-wait-policy passive|active] [--json OUT.json]

Both frameworks train the same model: `frugal init --preset P` writes random weights into a temp
dir, which transformers loads as is. Same LoRA (rank r, alpha 2r, dropout 0, all seven linears),
AdamW (lr 2e-4), grad-norm clipping 1.0, batch [micro_batch, seq_len], no activation
checkpointing, the same thread count (OMP_NUM_THREADS / torch.set_num_threads).
 - PyTorch: transformers LlamaForCausalLM, frozen base NF4 through bitsandbytes
   (BitsAndBytesConfig(load_in_4bit, nf4, double quant, bf16 compute)) when that works on this CPU,
   else the bf16 base (the table says which), PEFT LoRA, torch.autocast("cpu", bfloat16).
   One warm-up step, then --steps timed steps; the median step time gives tokens/s.
 - frugal: `frugal bench train --json` with the same settings (median over its --steps steps).
Each framework runs in its own process, so ru_maxrss (peak RSS of the whole process, model load
included) is measured separately. Prints a table with both and the ratios frugal/PyTorch.
Issue 3's target: frugal >= 1.5x PyTorch's tokens/s at <= 0.6x its peak RSS.
--also-bf16 adds a third column: PyTorch + PEFT on the bf16 base (no bitsandbytes), whose CPU speed
does not depend on bitsandbytes' CPU 4-bit kernels (ratios are also printed against it).
--omp-wait-policy sets OMP_WAIT_POLICY for both frameworks (both use OpenMP). On a machine shared
with other jobs, spinning OpenMP threads wait a scheduler time slice at every barrier whose partner
thread is descheduled (measured: frugal 30-45 s per `small` step with the default policy vs 3 s
passive, at load ~10 on 2 cores); passive makes both frameworks' figures meaningful there.
Python is only used here (a benchmark driver); CI never runs it.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def worker_pytorch(a):
    """Runs in its own process: trains a.steps (+1 warm-up) steps, prints one JSON line."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    base = "bf16"
    note = ""
    model = None
    if a.quant == "nf4":
        try:
            bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                     bnb_4bit_use_double_quant=True,
                                     bnb_4bit_compute_dtype=torch.bfloat16)
            model = AutoModelForCausalLM.from_pretrained(a.model_dir, quantization_config=bnb,
                                                         dtype=torch.bfloat16, device_map="cpu")
            base = "nf4 (bitsandbytes)"
        except Exception as e:  # bitsandbytes without a working CPU backend
            note = f"bitsandbytes NF4 failed on CPU ({type(e).__name__}: {str(e)[:160]}); bf16 base used"
            model = None
    if model is None:
        model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=torch.bfloat16)
    lcfg = LoraConfig(r=a.rank, lora_alpha=2 * a.rank, lora_dropout=0.0, bias="none",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                      "down_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(model, lcfg)  # adapters fp32 (autocast_adapter_dtype)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=2e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(1234)
    times, losses = [], []
    for s in range(a.steps + 1):
        ids = torch.randint(0, V, (a.micro_batch, a.seq_len), generator=g)
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        losses.append(out.loss.item())
        if s > 0:  # step 0 is the warm-up
            times.append(dt)
        print(f"pytorch: step {s} loss {losses[-1]:.4f} {dt:.3f} s", file=sys.stderr, flush=True)
    med = statistics.median(times)
    tokens = a.micro_batch * a.seq_len
    print(json.dumps({
        "framework": "pytorch", "base": base, "note": note, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "trainable_parameters": n_trainable,
        "step_seconds": med, "step_seconds_all": times, "tokens_per_s": tokens / med,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "losses": losses}))


def last_json(text, who):
    """The JSON object printed last on stdout (libraries may print other lines before it)."""
    start = text.find("{")
    while start >= 0:
        try:
            return json.loads(text[start:])
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
    sys.exit(f"bench_vs_pytorch: no JSON in the output of {who}:\n{text[-2000:]}")


def run(cmd, env, who, want_json=True):
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        sys.exit(f"bench_vs_pytorch: {who} failed (exit {r.returncode}):\n{r.stderr[-4000:]}")
    sys.stderr.write("".join(l + "\n" for l in r.stderr.splitlines() if "step" in l))
    return last_json(r.stdout, who) if want_json else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("frugal_bin")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quant", default="nf4", choices=["nf4", "none"])
    ap.add_argument("--also-bf16", action="store_true",
                    help="also run PyTorch LoRA on the bf16 base (no bitsandbytes)")
    ap.add_argument("--omp-wait-policy", default="", choices=["", "passive", "active"],
                    help="OMP_WAIT_POLICY for both frameworks (default: inherited)")
    ap.add_argument("--json", default="", help="also write both results and the ratios here")
    ap.add_argument("--_worker", default="", help=argparse.SUPPRESS)
    ap.add_argument("--_model-dir", dest="model_dir", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._worker == "pytorch":
        return worker_pytorch(a)

    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    if a.omp_wait_policy:
        env["OMP_WAIT_POLICY"] = a.omp_wait_policy
    frugal = os.path.abspath(a.frugal_bin)
    common = ["--seq-len", str(a.seq_len), "--micro-batch", str(a.micro_batch), "--steps", str(a.steps),
              "--rank", str(a.rank), "--threads", str(a.threads)]
    pts = []  # (column name, result)
    with tempfile.TemporaryDirectory(prefix="frugal-bench-vs-pt-") as tmp:
        mdir = os.path.join(tmp, "model")
        run([frugal, "init", "--preset", a.preset, "--out", mdir, "--seed", "0"], env, "frugal init",
            want_json=False)
        worker = [sys.executable, os.path.abspath(__file__), frugal, "--_worker", "pytorch", "--_model-dir", mdir]
        pts.append(("pytorch", run(worker + common + ["--quant", a.quant], env, "pytorch worker")))
        if a.also_bf16 and a.quant != "none":
            pts.append(("pytorch-bf16", run(worker + common + ["--quant", "none"], env, "pytorch worker (bf16)")))
    fr = run([frugal, "bench", "train", "--preset", a.preset, "--quant", a.quant, "--json"] + common[:-2],
             env, "frugal bench train")

    mb = 1.0 / (1 << 20)
    print(f"QLoRA training step: preset {a.preset}, B={a.micro_batch} T={a.seq_len}, LoRA r={a.rank} "
          f"alpha={2 * a.rank} all linears, {a.threads} threads, median of {a.steps} steps, "
          f"OMP_WAIT_POLICY={env.get('OMP_WAIT_POLICY', '(unset)')}")
    names = ["frugal"] + [n for n, _ in pts]
    res = [fr] + [r for _, r in pts]
    print(f"{'':22s}" + "".join(f"{n:>16s}" for n in names) + "".join(f"{'frugal/' + n:>22s}" for n in names[1:]))
    print(f"{'base weights':22s}{fr.get('quant', a.quant):>16s}" + "".join(f"{r['base'][:15]:>16s}" for _, r in pts))
    def row(label, key, scale, fmt):
        line = f"{label:22s}" + "".join(f"{r[key] * scale:16{fmt}}" for r in res)
        line += "".join(f"{fr[key] / r[key]:22.3f}" for _, r in pts)
        print(line)
    row("step seconds", "step_seconds", 1.0, ".3f")
    row("tokens/s", "tokens_per_s", 1.0, ".1f")
    row("peak RSS (MB)", "peak_rss_bytes", mb, ".1f")
    print(f"{'trainable parameters':22s}" + "".join(f"{r.get('trainable_parameters', 0):16d}" for r in res))
    for n, r in pts:
        if r["note"]:
            print(f"note ({n}):", r["note"])
    pt = pts[0][1]
    tps_ratio = fr["tokens_per_s"] / pt["tokens_per_s"]
    rss_ratio = fr["peak_rss_bytes"] / pt["peak_rss_bytes"]
    print(f"vs {pts[0][0]} ({pt['base']}): tokens/s x{tps_ratio:.2f} (target >= 1.5), peak RSS x{rss_ratio:.2f} "
          f"(target <= 0.6): {'met' if tps_ratio >= 1.5 and rss_ratio <= 0.6 else 'NOT met'}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"frugal": fr, "pytorch": dict(pts), "tokens_per_s_ratio": tps_ratio,
                       "peak_rss_ratio": rss_ratio}, f, indent=2)


if __name__ == "__main__":
    main()
