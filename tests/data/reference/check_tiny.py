#!/usr/bin/env python3
"""Recomputes a golden directory (default: tiny-v3, made with DeepSeek's official model.py) with
deepseek_ref.py and prints the error of every check against its golden.safetensors.

Relative error of a tensor = max|ours - golden| / max|golden|; for gradients the worst tensor is shown.
Exit status 1 when a check exceeds its limit (--tol for logits/loss/gradients; top-k, greedy tokens
and the set of gradient tensors must be identical).

It also prints how far an all-float64 computation (RoPE, attention softmax and softmax router in
float64 instead of the official float32) lands from the golden data: the float32 noise the golden data
carry, i.e. the least error a float64 implementation can show against them.

usage: check_tiny.py [DIR] [--tol 1e-12]
"""

import argparse
import os
import sys

import torch

sys.dont_write_bytecode = True  # keep the source folder free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deepseek_ref as ref  # noqa: E402


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", nargs="?", default=os.path.join(here, "..", "tiny-v3"))
    ap.add_argument("--tol", type=float, default=1e-12)
    opt = ap.parse_args()

    a = ref.load_config(os.path.join(opt.dir, "config.json"))
    params = ref.load_params(os.path.join(opt.dir, "model.safetensors"), a)
    gold = ref.read_safetensors(os.path.join(opt.dir, "golden.safetensors"))
    tokens = gold["inputs.tokens"]
    prompt_len = int(gold["inputs.prompt_len"][0])
    n_new = gold["expected.greedy"].size(1)
    ours, info = ref.compute_golden(params, a, tokens, prompt_len, n_new)

    ok = True

    def report(name, err, limit):
        nonlocal ok
        bad = err > limit
        ok &= not bad
        print(f"{name:<30} {err:.3e}{'   FAIL (limit %.0e)' % limit if bad else ''}")

    gk = sorted(k for k in gold if k.startswith("expected.grad."))
    ok_k = sorted(k for k in ours if k.startswith("expected.grad."))
    if gk != ok_k:
        ok = False
        print(f"gradient tensors differ: only golden {sorted(set(gk) - set(ok_k))}, only ours {sorted(set(ok_k) - set(gk))}")
        return 1
    err = ref.compare(ours, gold)
    report("logits (rel)", err["logits"], opt.tol)
    report("loss (rel)", err["loss"], opt.tol)
    report(f"gradients (rel, {len(gk)} tensors)", err["grad"], opt.tol)
    print(f"  worst gradient tensor: {err['grad_name']}")

    gold_topk = sorted(k for k in gold if k.startswith("expected.topk."))
    if gold_topk != sorted(k for k in ours if k.startswith("expected.topk.")):
        ok = False
        print(f"MoE layers differ: golden {gold_topk}, ours {sorted(k for k in ours if k.startswith('expected.topk.'))}")
    for k in gold_topk:
        same = k in ours and torch.equal(ours[k], gold[k])
        ok &= same
        print(f"{k[len('expected.'):]:<30} {'identical' if same else 'DIFFERENT'}")
    same = torch.equal(ours["expected.greedy"], gold["expected.greedy"])
    ok &= same
    print(f"{'greedy tokens':<30} {'identical' if same else 'DIFFERENT'}")
    if not same:
        print(f"  ours   {ours['expected.greedy'].tolist()}\n  golden {gold['expected.greedy'].tolist()}")

    print(f"absorb vs naive logits (rel)   {info['absorb_vs_naive']:.3e}")
    print(f"min routing margin             {info['min_routing_margin']:.3e}")
    print(f"min greedy top-1/top-2 gap     {info['min_greedy_gap']:.3e}")
    with ref.internals(torch.float64):
        exact, _ = ref.compute_golden(params, a, tokens, prompt_len, n_new)
    noise = ref.compare(exact, gold)
    print(f"all-float64 vs golden: logits {noise['logits']:.2e}, loss {noise['loss']:.2e}, "
          f"gradients {noise['grad']:.2e} ({noise['grad_name']}), greedy "
          f"{'identical' if torch.equal(exact['expected.greedy'], gold['expected.greedy']) else 'DIFFERENT'}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
