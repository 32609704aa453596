#!/usr/bin/env python3
"""Independent PyTorch reference of the DeepSeek-V3 architecture, used to produce golden data.

It follows the semantics of DeepSeek's official inference code (inference/model.py): YaRN RoPE tables
and the interleaved (adjacent-pair) rotation computed in float32, attention softmax in float32 cast back
to the activation dtype, the softmax router in float32, MLA with a "naive" path (per-head K/V) and an "absorb" path (latent KV cache,
W_UK folded into the query, W_UV applied after attention), the router with -inf masking of dropped
groups, SwiGLU experts, pre-norm blocks, final RMSNorm and an untied head. Everything else runs in
float64. Weights are read under their HF (DeepseekV3ForCausalLM) names from a safetensors file and the
model is described by an HF config.json.

Two points where the official code and HF transformers can differ are resolved so both agree on every
config this module accepts:
  * top-k weight renormalisation follows `norm_topk_prob` (the official code renormalises for sigmoid
    only; generated variants keep norm_topk_prob == (scoring_func == "sigmoid"));
  * cos/sin are multiplied by get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim) (HF's YaRN
    attention factor; 1 when the two are equal, which is the only case the official code covers).

Only torch (CPU) is needed; safetensors files are read and written by the small functions below.
"""

import contextlib
import json
import math
import struct
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# The official code computes the RoPE table and rotation, the attention softmax and the softmax router in
# float32 whatever the model dtype. `internals(torch.float64)` switches those to float64, which gives the
# result an all-float64 implementation converges to and so measures the float32 noise in golden data.
_INTERNAL = torch.float32


@contextlib.contextmanager
def internals(dtype):
    global _INTERNAL
    saved, _INTERNAL = _INTERNAL, dtype
    try:
        yield
    finally:
        _INTERNAL = saved

# ----------------------------------------------------------------------------------------------------
# safetensors: 8-byte little-endian header length, JSON header, raw little-endian tensor data.

_DTYPE_OF = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
             "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8}
_NAME_OF = {v: k for k, v in _DTYPE_OF.items()}


def read_safetensors(path):
    """Returns {name: tensor} in file order."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError(f"{path}: too short for a safetensors file ({len(blob)} bytes)")
    (n,) = struct.unpack("<Q", blob[:8])
    if 8 + n > len(blob):
        raise ValueError(f"{path}: header length {n} exceeds the file size {len(blob)}")
    header = json.loads(blob[8:8 + n])
    base = 8 + n
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] not in _DTYPE_OF:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {entry['dtype']}")
        dtype = _DTYPE_OF[entry["dtype"]]
        begin, end = entry["data_offsets"]
        if not 0 <= begin <= end <= len(blob) - base:
            raise ValueError(f"{path}: tensor {name} has data_offsets {begin}..{end} outside the data")
        numel = math.prod(entry["shape"])
        if (end - begin) != numel * torch.empty(0, dtype=dtype).element_size():
            raise ValueError(f"{path}: tensor {name} of shape {entry['shape']} has {end - begin} bytes")
        flat = torch.frombuffer(bytearray(blob[base + begin:base + end]), dtype=dtype) if numel else \
            torch.empty(0, dtype=dtype)
        out[name] = flat.reshape(entry["shape"])
    return out


def write_safetensors(path, tensors):
    """Writes {name: tensor} in dict order; the header is padded with spaces to a multiple of 8."""
    header, chunks, offset = {}, [], 0
    for name, t in tensors.items():
        t = t.detach().contiguous().cpu()
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": _NAME_OF[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for c in chunks:
            f.write(c)


# ----------------------------------------------------------------------------------------------------
# Configuration

def yarn_get_mscale(factor, mscale):
    """YaRN magnitude correction 0.1·mscale·ln(factor) + 1 (1 without scaling)."""
    return 1.0 if factor <= 1.0 else 0.1 * mscale * math.log(factor) + 1.0


@dataclass
class ModelArgs:
    vocab_size: int
    dim: int
    inter_dim: int
    moe_inter_dim: int
    n_layers: int
    n_dense_layers: int
    n_heads: int
    n_routed_experts: int
    n_shared_experts: int
    n_activated_experts: int
    n_expert_groups: int
    n_limited_groups: int
    score_func: str            # "softmax" or "sigmoid"
    route_scale: float
    gate_bias: bool            # e_score_correction_bias present (topk_method "noaux_tc")
    norm_topk_prob: bool
    q_lora_rank: int           # 0: single q_proj
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    max_seq_len: int
    original_seq_len: int      # YaRN is active iff max_seq_len > original_seq_len
    rope_theta: float
    rope_factor: float
    beta_fast: float
    beta_slow: float
    mscale: float              # HF mscale_all_dim: enters the softmax scale
    rope_attn_factor: float    # multiplies cos/sin (HF attention factor)
    norm_eps: float

    @property
    def qk_head_dim(self):
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def yarn(self):
        return self.max_seq_len > self.original_seq_len

    @property
    def softmax_scale(self):
        s = self.qk_head_dim ** -0.5
        if self.yarn:
            m = 0.1 * self.mscale * math.log(self.rope_factor) + 1.0
            s = s * m * m
        return s

    def is_moe(self, layer):
        return layer >= self.n_dense_layers


def _need(cfg, key, where="config.json"):
    if key not in cfg or cfg[key] is None:
        raise ValueError(f"{where}: required field '{key}' is missing or null")
    return cfg[key]


def args_from_hf_config(cfg):
    """Maps an HF DeepseekV3 config.json (as a dict) to ModelArgs; rejects what this model cannot run."""
    if cfg.get("model_type") not in ("deepseek_v3", "deepseek_v2"):
        raise ValueError(f"config.json: model_type must be deepseek_v3 or deepseek_v2, found {cfg.get('model_type')!r}")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config.json: hidden_act must be silu, found {cfg.get('hidden_act')!r}")
    if cfg.get("moe_layer_freq", 1) != 1:
        raise ValueError(f"config.json: moe_layer_freq must be 1, found {cfg.get('moe_layer_freq')!r}")
    if cfg.get("tie_word_embeddings", False):
        raise ValueError("config.json: tie_word_embeddings must be false")
    score = _need(cfg, "scoring_func")
    if score not in ("softmax", "sigmoid"):
        raise ValueError(f"config.json: scoring_func must be softmax or sigmoid, found {score!r}")
    method = cfg.get("topk_method", "greedy")
    if method not in ("greedy", "group_limited_greedy", "noaux_tc"):
        raise ValueError(f"config.json: topk_method must be greedy, group_limited_greedy or noaux_tc, found {method!r}")
    max_seq = _need(cfg, "max_position_embeddings")
    original, factor, beta_fast, beta_slow, mscale, attn_factor = max_seq, 1.0, 32.0, 1.0, 0.0, 1.0
    rs = cfg.get("rope_scaling")
    if rs is not None:
        kind = rs.get("type", rs.get("rope_type"))
        if kind != "yarn":
            raise ValueError(f"config.json: rope_scaling.type must be yarn, found {kind!r}")
        factor = float(_need(rs, "factor", "config.json rope_scaling"))
        original = int(_need(rs, "original_max_position_embeddings", "config.json rope_scaling"))
        beta_fast = float(rs.get("beta_fast", 32.0))
        beta_slow = float(rs.get("beta_slow", 1.0))
        # The official code and HF agree only when both mscale values are given.
        m = float(_need(rs, "mscale", "config.json rope_scaling"))
        m_all = float(_need(rs, "mscale_all_dim", "config.json rope_scaling"))
        mscale = m_all
        attn_factor = yarn_get_mscale(factor, m) / yarn_get_mscale(factor, m_all)
    q_lora = cfg.get("q_lora_rank")
    a = ModelArgs(
        vocab_size=_need(cfg, "vocab_size"), dim=_need(cfg, "hidden_size"),
        inter_dim=_need(cfg, "intermediate_size"), moe_inter_dim=_need(cfg, "moe_intermediate_size"),
        n_layers=_need(cfg, "num_hidden_layers"), n_dense_layers=_need(cfg, "first_k_dense_replace"),
        n_heads=_need(cfg, "num_attention_heads"), n_routed_experts=_need(cfg, "n_routed_experts"),
        n_shared_experts=_need(cfg, "n_shared_experts"), n_activated_experts=_need(cfg, "num_experts_per_tok"),
        n_expert_groups=cfg.get("n_group") or 1, n_limited_groups=cfg.get("topk_group") or 1,
        score_func=score, route_scale=float(_need(cfg, "routed_scaling_factor")),
        gate_bias=method == "noaux_tc", norm_topk_prob=bool(cfg.get("norm_topk_prob", False)),
        q_lora_rank=0 if q_lora is None else int(q_lora), kv_lora_rank=_need(cfg, "kv_lora_rank"),
        qk_nope_head_dim=_need(cfg, "qk_nope_head_dim"), qk_rope_head_dim=_need(cfg, "qk_rope_head_dim"),
        v_head_dim=_need(cfg, "v_head_dim"), max_seq_len=max_seq, original_seq_len=original,
        rope_theta=float(_need(cfg, "rope_theta")), rope_factor=factor, beta_fast=beta_fast,
        beta_slow=beta_slow, mscale=mscale, rope_attn_factor=attn_factor,
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)))
    if a.qk_rope_head_dim % 2:
        raise ValueError(f"config.json: qk_rope_head_dim must be even, found {a.qk_rope_head_dim}")
    if a.n_routed_experts % a.n_expert_groups:
        raise ValueError(f"config.json: n_routed_experts {a.n_routed_experts} is not a multiple of n_group {a.n_expert_groups}")
    if not 1 <= a.n_limited_groups <= a.n_expert_groups:
        raise ValueError(f"config.json: topk_group must be in 1..n_group, found {a.n_limited_groups}")
    per_group = a.n_routed_experts // a.n_expert_groups
    if a.n_activated_experts > a.n_limited_groups * per_group:
        raise ValueError(f"config.json: num_experts_per_tok {a.n_activated_experts} exceeds the experts of the kept groups")
    if a.gate_bias and a.n_expert_groups > 1 and per_group < 2:
        raise ValueError("config.json: top-2 group scoring needs at least 2 experts per group")
    if not 0 <= a.n_dense_layers <= a.n_layers:
        raise ValueError(f"config.json: first_k_dense_replace must be in 0..num_hidden_layers, found {a.n_dense_layers}")
    return a


def load_config(path):
    with open(path) as f:
        return args_from_hf_config(json.load(f))


# ----------------------------------------------------------------------------------------------------
# Parameters under HF names

def param_shapes(a):
    """{HF name: shape} of every tensor of the model, in checkpoint order."""
    s = {"model.embed_tokens.weight": (a.vocab_size, a.dim)}
    for i in range(a.n_layers):
        p = f"model.layers.{i}."
        if a.q_lora_rank == 0:
            s[p + "self_attn.q_proj.weight"] = (a.n_heads * a.qk_head_dim, a.dim)
        else:
            s[p + "self_attn.q_a_proj.weight"] = (a.q_lora_rank, a.dim)
            s[p + "self_attn.q_a_layernorm.weight"] = (a.q_lora_rank,)
            s[p + "self_attn.q_b_proj.weight"] = (a.n_heads * a.qk_head_dim, a.q_lora_rank)
        s[p + "self_attn.kv_a_proj_with_mqa.weight"] = (a.kv_lora_rank + a.qk_rope_head_dim, a.dim)
        s[p + "self_attn.kv_a_layernorm.weight"] = (a.kv_lora_rank,)
        s[p + "self_attn.kv_b_proj.weight"] = (a.n_heads * (a.qk_nope_head_dim + a.v_head_dim), a.kv_lora_rank)
        s[p + "self_attn.o_proj.weight"] = (a.dim, a.n_heads * a.v_head_dim)
        if a.is_moe(i):
            s[p + "mlp.gate.weight"] = (a.n_routed_experts, a.dim)
            if a.gate_bias:
                s[p + "mlp.gate.e_score_correction_bias"] = (a.n_routed_experts,)
            experts = [f"mlp.experts.{e}." for e in range(a.n_routed_experts)]
            if a.n_shared_experts > 0:
                experts.append("mlp.shared_experts.")
            for e in experts:
                width = a.moe_inter_dim * (a.n_shared_experts if e == "mlp.shared_experts." else 1)
                s[p + e + "gate_proj.weight"] = (width, a.dim)
                s[p + e + "down_proj.weight"] = (a.dim, width)
                s[p + e + "up_proj.weight"] = (width, a.dim)
        else:
            s[p + "mlp.gate_proj.weight"] = (a.inter_dim, a.dim)
            s[p + "mlp.down_proj.weight"] = (a.dim, a.inter_dim)
            s[p + "mlp.up_proj.weight"] = (a.inter_dim, a.dim)
        s[p + "input_layernorm.weight"] = (a.dim,)
        s[p + "post_attention_layernorm.weight"] = (a.dim,)
    s["model.norm.weight"] = (a.dim,)
    s["lm_head.weight"] = (a.vocab_size, a.dim)
    return s


def is_trained(name):
    """Every weight is trained by gradient except the router's correction bias."""
    return not name.endswith("e_score_correction_bias")


def load_params(path, a):
    """Reads model.safetensors and returns {HF name: float64 tensor}; checks names and shapes.
    Tensors of layers at or beyond num_hidden_layers (MTP modules) are ignored."""
    raw = read_safetensors(path)
    shapes = param_shapes(a)
    missing = [n for n in shapes if n not in raw]
    if missing:
        raise ValueError(f"{path}: missing tensor {missing[0]} (and {len(missing) - 1} more)")
    for n in raw:
        if n in shapes:
            continue
        parts = n.split(".")
        if n.startswith("model.layers.") and parts[2].isdigit() and int(parts[2]) >= a.n_layers:
            continue
        raise ValueError(f"{path}: unexpected tensor {n}")
    out = {}
    for n, shape in shapes.items():
        if tuple(raw[n].shape) != tuple(shape):
            raise ValueError(f"{path}: tensor {n} has shape {list(raw[n].shape)}, expected {list(shape)}")
        out[n] = raw[n].to(torch.float64)
    return out


# ----------------------------------------------------------------------------------------------------
# Building blocks

def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def swiglu(x, p, prefix):
    gate = F.linear(x, p[prefix + "gate_proj.weight"])
    up = F.linear(x, p[prefix + "up_proj.weight"])
    return F.linear(F.silu(gate) * up, p[prefix + "down_proj.weight"])


def _correction_dim(rotations, dim, base, seq_len):
    return dim * math.log(seq_len / (rotations * 2 * math.pi)) / (2 * math.log(base))


def precompute_freqs_cis(a):
    """(max_seq_len, rope/2) complex table (complex64 by default): rotation of pair j at position t by
    t·freq_j (YaRN-blended), times the attention factor."""
    dim = a.qk_rope_head_dim
    freqs = 1.0 / (a.rope_theta ** (torch.arange(0, dim, 2, dtype=_INTERNAL) / dim))
    if a.yarn:
        low = max(math.floor(_correction_dim(a.beta_fast, dim, a.rope_theta, a.original_seq_len)), 0)
        high = min(math.ceil(_correction_dim(a.beta_slow, dim, a.rope_theta, a.original_seq_len)), dim - 1)
        if low == high:
            high += 0.001
        ramp = torch.clamp((torch.arange(dim // 2, dtype=_INTERNAL) - low) / (high - low), 0, 1)
        smooth = 1 - ramp
        freqs = freqs / a.rope_factor * (1 - smooth) + freqs * smooth
    angles = torch.outer(torch.arange(a.max_seq_len), freqs)
    return torch.polar(torch.full_like(angles, a.rope_attn_factor), angles)


def apply_rope(x, freqs_cis):
    """x (b, s, h, rope): rotates adjacent pairs (x[2j], x[2j+1]) in float32 (see internals), returns
    x's dtype."""
    xc = torch.view_as_complex(x.to(_INTERNAL).reshape(*x.shape[:-1], -1, 2))
    f = freqs_cis.view(1, xc.size(1), 1, xc.size(-1))
    return torch.view_as_real(xc * f).flatten(3).to(x.dtype)


class LatentCache:
    """Absorb-path cache of one layer: normalised KV latent (b, T, kv_lora) and roped key (b, T, rope)."""

    def __init__(self):
        self.kv = None
        self.pe = None

    def append(self, kv, pe, start_pos):
        length = 0 if self.kv is None else self.kv.size(1)
        if start_pos != length:
            raise ValueError(f"latent cache holds {length} positions, a step starts at {start_pos}")
        self.kv = kv if self.kv is None else torch.cat([self.kv, kv], 1)
        self.pe = pe if self.pe is None else torch.cat([self.pe, pe], 1)
        return self.kv, self.pe


def mla(p, prefix, a, x, freqs_cis, mask, impl, cache=None, start_pos=0):
    b, s, _ = x.shape
    h, nope, rope, vdim = a.n_heads, a.qk_nope_head_dim, a.qk_rope_head_dim, a.v_head_dim
    if a.q_lora_rank == 0:
        q = F.linear(x, p[prefix + "q_proj.weight"])
    else:
        q_lat = rms_norm(F.linear(x, p[prefix + "q_a_proj.weight"]), p[prefix + "q_a_layernorm.weight"], a.norm_eps)
        q = F.linear(q_lat, p[prefix + "q_b_proj.weight"])
    q = q.view(b, s, h, nope + rope)                                              # (b, s, h, nope + rope)
    q_nope, q_pe = torch.split(q, [nope, rope], dim=-1)
    q_pe = apply_rope(q_pe, freqs_cis)
    kv = F.linear(x, p[prefix + "kv_a_proj_with_mqa.weight"])                     # (b, s, kv_lora + rope)
    kv, k_pe = torch.split(kv, [a.kv_lora_rank, rope], dim=-1)
    k_pe = apply_rope(k_pe.unsqueeze(2), freqs_cis)                               # (b, s, 1, rope): one key for all heads
    kv_norm = p[prefix + "kv_a_layernorm.weight"]
    wkv_b = p[prefix + "kv_b_proj.weight"]                                        # (h * (nope + v), kv_lora)
    if impl == "naive":
        q = torch.cat([q_nope, q_pe], dim=-1)
        kv = F.linear(rms_norm(kv, kv_norm, a.norm_eps), wkv_b).view(b, s, h, nope + vdim)
        k_nope, v = torch.split(kv, [nope, vdim], dim=-1)
        k = torch.cat([k_nope, k_pe.expand(-1, -1, h, -1)], dim=-1)              # (b, s, h, nope + rope)
        scores = torch.einsum("bshd,bthd->bsht", q, k) * a.softmax_scale
    elif impl == "absorb":
        w = wkv_b.view(h, nope + vdim, a.kv_lora_rank)                            # per head: rows W_UK then W_UV
        q_lat = torch.einsum("bshd,hdc->bshc", q_nope, w[:, :nope])               # (b, s, h, kv_lora)
        kv_all, pe_all = cache.append(rms_norm(kv, kv_norm, a.norm_eps), k_pe.squeeze(2), start_pos)
        scores = (torch.einsum("bshc,btc->bsht", q_lat, kv_all) +
                  torch.einsum("bshr,btr->bsht", q_pe, pe_all)) * a.softmax_scale
    else:
        raise ValueError(f"unknown attention implementation {impl!r}")
    if mask is not None:
        scores = scores + mask.unsqueeze(1)
    probs = scores.softmax(dim=-1, dtype=_INTERNAL).type_as(x)               # (b, s, h, t)
    if impl == "naive":
        o = torch.einsum("bsht,bthd->bshd", probs, v)
    else:
        o = torch.einsum("bsht,btc->bshc", probs, kv_all)
        o = torch.einsum("bshc,hdc->bshd", o, w[:, -vdim:])                       # (b, s, h, v)
    return F.linear(o.flatten(2), p[prefix + "o_proj.weight"])


def _topk_margin(scores, k):
    """Per row: gap between the k-th and (k+1)-th largest value (inf when there is no finite runner-up)."""
    if k >= scores.size(-1):
        return torch.full(scores.shape[:-1], math.inf, dtype=torch.float64)
    top = scores.double().topk(k + 1, dim=-1)[0]
    return top[..., k - 1] - top[..., k]


def gate(p, prefix, a, x, record=None):
    """x (T, dim) -> routing weights (T, k) in x's dtype and expert indices (T, k)."""
    scores = F.linear(x, p[prefix + "weight"])                                   # (T, E)
    if a.score_func == "softmax":
        scores = scores.softmax(dim=-1, dtype=_INTERNAL)
    else:
        scores = scores.sigmoid()
    original = scores
    if a.gate_bias:
        scores = scores + p[prefix + "e_score_correction_bias"]                   # selection only
    margins = []
    sel = scores.detach()
    if a.n_expert_groups > 1:
        grouped = sel.view(x.size(0), a.n_expert_groups, -1)                      # (T, groups, E / groups)
        if a.gate_bias:
            group_scores = grouped.topk(2, dim=-1)[0].sum(dim=-1)
        else:
            group_scores = grouped.amax(dim=-1)
        keep = group_scores.topk(a.n_limited_groups, dim=-1)[1]
        drop = torch.ones(x.size(0), a.n_expert_groups, dtype=torch.bool).scatter_(1, keep, False)
        sel = grouped.masked_fill(drop.unsqueeze(-1), float("-inf")).flatten(1)
        margins.append(_topk_margin(group_scores, a.n_limited_groups))
    indices = sel.topk(a.n_activated_experts, dim=-1)[1]
    margins.append(_topk_margin(sel, a.n_activated_experts))
    weights = original.gather(1, indices)
    if a.norm_topk_prob:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    weights = weights * a.route_scale
    if record is not None:
        record.routing(indices, torch.stack(margins).amin(0))
    return weights.type_as(x), indices


def moe(p, prefix, a, x, record=None):
    shape = x.shape
    x = x.reshape(-1, a.dim)                                                      # (T, dim)
    weights, indices = gate(p, prefix + "gate.", a, x, record)
    y = torch.zeros_like(x)
    counts = torch.bincount(indices.flatten(), minlength=a.n_routed_experts).tolist()
    for e in range(a.n_routed_experts):
        if counts[e] == 0:
            continue                                                              # unused expert: no gradient
        rows, slot = torch.where(indices == e)
        y = y.index_add(0, rows, swiglu(x[rows], p, f"{prefix}experts.{e}.") * weights[rows, slot, None])
    if a.n_shared_experts > 0:
        y = y + swiglu(x, p, prefix + "shared_experts.")
    return y.view(shape)


class Record:
    """Collects per-MoE-layer expert choices and the smallest routing margin of every decision."""

    def __init__(self):
        self.layer = None
        self.topk = {}
        self.min_margin = math.inf

    def routing(self, indices, margins):
        self.topk.setdefault(self.layer, []).append(indices.detach().clone())
        self.min_margin = min(self.min_margin, float(margins.min()))


def forward(p, a, tokens, impl="naive", start_pos=0, caches=None, record=None, freqs_cis=None):
    """tokens (b, s) -> logits (b, s, vocab). The absorb path needs one LatentCache per layer; like the
    official code a multi-token call must start at position 0 (prefill) and later calls take one token."""
    b, s = tokens.shape
    if s > 1 and start_pos != 0:
        raise ValueError("a multi-token step must start at position 0")
    if start_pos + s > a.max_seq_len:
        raise ValueError(f"positions up to {start_pos + s} exceed max_position_embeddings {a.max_seq_len}")
    if freqs_cis is None:
        freqs_cis = precompute_freqs_cis(a)
    freqs = freqs_cis[start_pos:start_pos + s]
    mask = torch.full((s, s), float("-inf"), dtype=torch.float64).triu_(1) if s > 1 else None
    hid = F.embedding(tokens, p["model.embed_tokens.weight"])                    # (b, s, dim)
    for i in range(a.n_layers):
        pre = f"model.layers.{i}."
        attn_in = rms_norm(hid, p[pre + "input_layernorm.weight"], a.norm_eps)
        hid = hid + mla(p, pre + "self_attn.", a, attn_in, freqs, mask, impl,
                        None if caches is None else caches[i], start_pos)
        ffn_in = rms_norm(hid, p[pre + "post_attention_layernorm.weight"], a.norm_eps)
        if a.is_moe(i):
            if record is not None:
                record.layer = i
            hid = hid + moe(p, pre + "mlp.", a, ffn_in, record)
        else:
            hid = hid + swiglu(ffn_in, p, pre + "mlp.")
    hid = rms_norm(hid, p["model.norm.weight"], a.norm_eps)
    return F.linear(hid, p["lm_head.weight"])


def next_token_loss(logits, tokens):
    """Mean cross-entropy of predicting tokens[:, 1:] from logits[:, :-1]."""
    v = logits.size(-1)
    return F.cross_entropy(logits[:, :-1].reshape(-1, v), tokens[:, 1:].reshape(-1))


@torch.no_grad()
def greedy(p, a, prompt, n_new, record=None):
    """Greedy decoding through the absorbed latent cache: prefill the prompt, then one token per step.
    Returns (tokens (b, n_new), smallest top-1/top-2 logit gap over all steps)."""
    caches = [LatentCache() for _ in range(a.n_layers)]
    freqs_cis = precompute_freqs_cis(a)
    logits = forward(p, a, prompt, "absorb", 0, caches, record, freqs_cis)[:, -1]
    out, gap, pos = [], math.inf, prompt.size(1)
    for step in range(n_new):
        gap = min(gap, float(_topk_margin(logits, 1).min()))
        nxt = logits.argmax(-1)
        out.append(nxt)
        if step + 1 < n_new:
            logits = forward(p, a, nxt[:, None], "absorb", pos, caches, record, freqs_cis)[:, -1]
            pos += 1
    return torch.stack(out, 1), gap


def compute_golden(params, a, tokens, prompt_len=5, n_new=8):
    """Everything the golden files hold, in tiny-v3's order, plus diagnostics.
    Returns (golden dict, info dict with min routing margin, min greedy logit gap, naive/absorb agreement)."""
    p = {n: t.detach().clone().requires_grad_(is_trained(n)) for n, t in params.items()}
    rec = Record()
    logits = forward(p, a, tokens, "naive", record=rec)
    loss = next_token_loss(logits, tokens)
    trained = [n for n in p if is_trained(n)]
    grads = torch.autograd.grad(loss, [p[n] for n in trained], allow_unused=True)
    with torch.no_grad():
        caches = [LatentCache() for _ in range(a.n_layers)]
        absorbed = forward(p, a, tokens, "absorb", 0, caches)
        absorb_err = float((absorbed - logits).abs().max() / logits.abs().max())
    dec = Record()
    tokens_out, gap = greedy(p, a, tokens[:, :prompt_len], n_new, dec)
    g = {"inputs.tokens": tokens.to(torch.int64),
         "expected.logits": logits.detach(),
         "expected.loss": loss.detach(),
         "inputs.prompt_len": torch.tensor([prompt_len], dtype=torch.int64),
         "expected.greedy": tokens_out.to(torch.int64)}
    for n, gr in zip(trained, grads):
        if gr is not None:                        # experts that no token reached have no gradient entry
            g["expected.grad." + n] = gr.detach()
    for layer, picks in rec.topk.items():
        g[f"expected.topk.layer{layer}"] = torch.cat(picks).sort(dim=-1)[0].to(torch.int64)
    info = {"min_routing_margin": min(rec.min_margin, dec.min_margin),
            "min_greedy_gap": gap, "absorb_vs_naive": absorb_err,
            "unused_experts": [n for n, gr in zip(trained, grads) if gr is None]}
    return g, info


def rel_err(ours, gold):
    """max|ours - gold| / max|gold| (the absolute difference when gold is all zero)."""
    diff = float((ours.double() - gold.double()).abs().max())
    scale = float(gold.double().abs().max())
    return diff / scale if scale > 0 else diff


def compare(ours, gold):
    """Relative errors of logits, loss and the worst gradient tensor of two golden dicts with the same keys.
    Returns {"logits", "loss", "grad", "grad_name"}."""
    worst, name = 0.0, None
    for k in gold:
        if k.startswith("expected.grad."):
            e = rel_err(ours[k], gold[k])
            if name is None or e > worst:
                worst, name = e, k[len("expected.grad."):]
    return {"logits": rel_err(ours["expected.logits"], gold["expected.logits"]),
            "loss": rel_err(ours["expected.loss"], gold["expected.loss"]), "grad": worst, "grad_name": name}
