#!/usr/bin/env python3
"""Second, separately written forward pass that follows HF transformers' reading of a DeepseekV3
config.json, compared with a golden directory's expected logits and top-k.

It differs from deepseek_ref.py on purpose in every place where the two readings are computed
differently but must agree: everything in float64 (no float32 RoPE or softmax), YaRN inverse
frequencies built as HF does (blend of 1/pos_freq and 1/(factor·pos_freq)), RoPE applied by
de-interleaving to [evens, odds] and rotate_half with cos/sin scaled by the attention factor, the
softmax scale from mscale_all_dim whenever rope_scaling is given, the router masking dropped groups
with 0.0 and renormalising with a 1e-20 guard when norm_topk_prob, groups scored by their best expert
for topk_method "group_limited_greedy"/"greedy" and by their top-2 sum for "noaux_tc", and the MoE
computed densely (every expert on every token, weighted by a sparse (T, E) matrix).

Expected agreement: ~1e-7 relative on logits (the golden data carry float32 RoPE/softmax), identical
top-k. usage: check_hf_semantics.py DIR [DIR...]
"""

import json
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.dont_write_bytecode = True  # keep the source folder free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from deepseek_ref import read_safetensors  # noqa: E402  (file reading only)


def hf_mscale(factor, m=1.0):
    return 1.0 if factor <= 1 else 0.1 * m * math.log(factor) + 1.0


def hf_rope_tables(c, positions):
    d = c["qk_rope_head_dim"]
    base = float(c["rope_theta"])
    pos_freqs = base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    inv_freq = 1.0 / pos_freqs
    attn_factor = 1.0
    rs = c.get("rope_scaling")
    if rs is not None:
        factor, orig = rs["factor"], rs["original_max_position_embeddings"]

        def corr(rot):
            return (d * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(base))

        low, high = max(math.floor(corr(rs["beta_fast"])), 0), min(math.ceil(corr(rs["beta_slow"])), d - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(d // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
        extrap = 1 - ramp
        inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrap) + (1.0 / pos_freqs) * extrap
        attn_factor = hf_mscale(factor, rs["mscale"]) / hf_mscale(factor, rs["mscale_all_dim"])
    ang = torch.outer(torch.arange(positions, dtype=torch.float64), inv_freq)
    emb = torch.cat([ang, ang], -1)                                               # (s, rope)
    return emb.cos() * attn_factor, emb.sin() * attn_factor


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], -1)


def rope_interleaved(x, cos, sin):
    """x (b, h, s, d) with adjacent pairs -> [evens, odds] layout, rotated."""
    b, h, s, d = x.shape
    x = x.view(b, h, s, d // 2, 2).transpose(4, 3).reshape(b, h, s, d)
    return x * cos + rotate_half(x) * sin


def rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def mlp(x, w, pre):
    return F.linear(F.silu(F.linear(x, w[pre + "gate_proj.weight"])) * F.linear(x, w[pre + "up_proj.weight"]),
                    w[pre + "down_proj.weight"])


def attention(c, w, pre, x, cos, sin):
    b, s, _ = x.shape
    H, dn, dr, dv = c["num_attention_heads"], c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
    eps = c["rms_norm_eps"]
    if c.get("q_lora_rank") is None:
        q = F.linear(x, w[pre + "q_proj.weight"])
    else:
        q = F.linear(rms(F.linear(x, w[pre + "q_a_proj.weight"]), w[pre + "q_a_layernorm.weight"], eps),
                     w[pre + "q_b_proj.weight"])
    q = q.view(b, s, H, dn + dr).transpose(1, 2)                                   # (b, H, s, dn + dr)
    q_pass, q_rot = q.split([dn, dr], -1)
    ckv = F.linear(x, w[pre + "kv_a_proj_with_mqa.weight"])
    k_pass, k_rot = ckv.split([c["kv_lora_rank"], dr], -1)
    kv = F.linear(rms(k_pass, w[pre + "kv_a_layernorm.weight"], eps), w[pre + "kv_b_proj.weight"])
    kv = kv.view(b, s, H, dn + dv).transpose(1, 2)                                 # (b, H, s, dn + dv)
    k_pass, v = kv.split([dn, dv], -1)
    k_rot = k_rot.view(b, 1, s, dr)
    q_rot, k_rot = rope_interleaved(q_rot, cos, sin), rope_interleaved(k_rot, cos, sin)
    k_rot = k_rot.expand(b, H, s, dr)
    qs, ks = torch.cat([q_pass, q_rot], -1), torch.cat([k_pass, k_rot], -1)
    scaling = (dn + dr) ** -0.5
    rs = c.get("rope_scaling")
    if rs is not None and rs.get("mscale_all_dim"):
        m = hf_mscale(rs["factor"], rs["mscale_all_dim"])
        scaling *= m * m
    att = qs @ ks.transpose(-1, -2) * scaling                                      # (b, H, s, s)
    att = att.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
    o = (att @ v).transpose(1, 2).reshape(b, s, H * dv)
    return F.linear(o, w[pre + "o_proj.weight"])


def moe(c, w, pre, x, topk_out):
    b, s, d = x.shape
    t = x.reshape(-1, d)
    E, G, KG, K = c["n_routed_experts"], c.get("n_group") or 1, c.get("topk_group") or 1, c["num_experts_per_tok"]
    logits = F.linear(t, w[pre + "gate.weight"])
    scores = logits.sigmoid() if c["scoring_func"] == "sigmoid" else logits.softmax(-1)
    choice = scores + w[pre + "gate.e_score_correction_bias"] if c["topk_method"] == "noaux_tc" else scores
    if G > 1:
        grouped = choice.view(-1, G, E // G)
        gs = grouped.topk(2, -1)[0].sum(-1) if c["topk_method"] == "noaux_tc" else grouped.amax(-1)
        keep = torch.zeros_like(gs).scatter_(1, gs.topk(KG, -1)[1], 1.0)
        choice = choice.masked_fill(~keep.bool().repeat_interleave(E // G, 1), 0.0)
    idx = choice.topk(K, -1)[1]
    wts = scores.gather(1, idx)
    if c["norm_topk_prob"]:
        wts = wts / (wts.sum(-1, keepdim=True) + 1e-20)
    wts = wts * c["routed_scaling_factor"]
    dense = torch.zeros(t.size(0), E, dtype=t.dtype).scatter_(1, idx, wts)       # (T, E)
    y = sum(dense[:, e:e + 1] * mlp(t, w, f"{pre}experts.{e}.") for e in range(E))
    if c["n_shared_experts"]:
        y = y + mlp(t, w, pre + "shared_experts.")
    topk_out.append(idx.sort(-1)[0])
    return y.view(b, s, d)


def hf_forward(c, w, tokens):
    cos, sin = hf_rope_tables(c, tokens.size(1))
    x = F.embedding(tokens, w["model.embed_tokens.weight"])
    topk = {}
    eps = c["rms_norm_eps"]
    for i in range(c["num_hidden_layers"]):
        pre = f"model.layers.{i}."
        x = x + attention(c, w, pre + "self_attn.", rms(x, w[pre + "input_layernorm.weight"], eps), cos, sin)
        hn = rms(x, w[pre + "post_attention_layernorm.weight"], eps)
        if i >= c["first_k_dense_replace"]:
            x = x + moe(c, w, pre + "mlp.", hn, topk.setdefault(i, []))
        else:
            x = x + mlp(hn, w, pre + "mlp.")
    return F.linear(rms(x, w["model.norm.weight"], eps), w["lm_head.weight"]), topk


def main():
    ok = True
    for d in sys.argv[1:]:
        with open(os.path.join(d, "config.json")) as f:
            c = json.load(f)
        w = {k: v.double() for k, v in read_safetensors(os.path.join(d, "model.safetensors")).items()}
        g = read_safetensors(os.path.join(d, "golden.safetensors"))
        logits, topk = hf_forward(c, w, g["inputs.tokens"])
        gold = g["expected.logits"]
        err = float((logits - gold).abs().max() / gold.abs().max())
        same = all(torch.equal(topk[i][0], g[f"expected.topk.layer{i}"]) for i in topk) and \
            sorted(f"expected.topk.layer{i}" for i in topk) == sorted(k for k in g if k.startswith("expected.topk."))
        good = err < 1e-5 and same
        ok &= good
        print(f"{d}: logits rel err {err:.3e}, top-k {'identical' if same else 'DIFFERENT'} -> {'ok' if good else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
