#!/usr/bin/python3
"""A plain eager PyTorch DeepSeek-V3 model: the baseline of the CPU training benchmark.

It is written the way one would write the model for training in PyTorch without custom kernels: f32
modules with autograd, MLA with materialised per-head keys and values and a causal softmax, and an MoE
that loops over the experts with index_select / index_add_. Module and parameter names follow HF's
DeepseekV3ForCausalLM, so an HF checkpoint loads with load_state_dict and the state dict carries the
HF tensor names.

Architecture (from an HF config.json):
  embedding -> layers of [RMSNorm -> MLA -> residual, RMSNorm -> FFN -> residual] -> RMSNorm -> head.
  MLA: q = q_b(RMSNorm(q_a(x))), latent = kv_a(x) split into (kv_lora, rope); keys/values from
       kv_b(RMSNorm(latent)); one roped key shared by all heads; interleaved RoPE (adjacent pairs);
       softmax scale (nope + rope)^-0.5.
  FFN: a dense SwiGLU for the first `first_k_dense_replace` layers, then DeepSeekMoE: sigmoid scores,
       e_score_correction_bias added for selection only, groups ranked by the sum of their two best
       biased scores, the best `topk_group` groups kept, top-k experts among them, the unbiased scores
       of the chosen experts renormalised (norm_topk_prob) and multiplied by routed_scaling_factor, plus
       the shared experts as one SwiGLU.
  Loss: mean cross-entropy of predicting tokens[:, 1:] from logits[:, :-1].

`python3 model.py --self-test` checks logits, loss, gradients and expert choices against the golden data
of tests/data/tiny-v3 (made with DeepSeek's official inference code).
"""

import argparse
import json
import math
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------------------
# Configuration

@dataclass(frozen=True)
class Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int        # dense FFN width
    moe_intermediate_size: int    # width of one expert
    num_hidden_layers: int
    first_k_dense_replace: int
    num_attention_heads: int
    n_routed_experts: int
    n_shared_experts: int
    num_experts_per_tok: int
    n_group: int
    topk_group: int
    norm_topk_prob: bool
    routed_scaling_factor: float
    q_lora_rank: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int

    @property
    def qk_head_dim(self):
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    def is_moe(self, layer):
        return layer >= self.first_k_dense_replace

    @classmethod
    def from_hf(cls, hf, where="config.json"):
        """Reads the fields of an HF DeepseekV3 config (a dict). Raises ValueError naming the field for
        anything this model does not implement."""
        def need(key):
            if hf.get(key) is None:
                raise ValueError(f"{where}: required field '{key}' is missing or null")
            return hf[key]

        def expect(key, allowed, default):
            value = hf.get(key, default)
            if value not in allowed:
                raise ValueError(f"{where}: field '{key}' must be {' or '.join(map(json.dumps, allowed))} (what this "
                                 f"model implements), found {json.dumps(value)}")

        expect("model_type", ("deepseek_v3",), None)
        expect("hidden_act", ("silu",), "silu")
        expect("scoring_func", ("sigmoid",), None)
        expect("topk_method", ("noaux_tc",), None)
        expect("moe_layer_freq", (1,), 1)
        expect("tie_word_embeddings", (False,), False)
        expect("rope_scaling", (None,), None)
        optional = dict(n_group=hf.get("n_group") or 1, topk_group=hf.get("topk_group") or 1,
                        norm_topk_prob=bool(hf.get("norm_topk_prob", False)))
        c = cls(**{f: need(f) for f in cls.__dataclass_fields__ if f not in optional}, **optional)
        if c.qk_rope_head_dim % 2:
            raise ValueError(f"{where}: qk_rope_head_dim must be even, found {c.qk_rope_head_dim}")
        if c.n_routed_experts % c.n_group:
            raise ValueError(f"{where}: n_routed_experts {c.n_routed_experts} is not a multiple of n_group {c.n_group}")
        if c.n_group > 1 and c.n_routed_experts // c.n_group < 2:
            raise ValueError(f"{where}: group scores take the two best experts of a group, but a group has "
                             f"{c.n_routed_experts // c.n_group}")
        if not 1 <= c.topk_group <= c.n_group:
            raise ValueError(f"{where}: topk_group must be in 1..n_group ({c.n_group}), found {c.topk_group}")
        if not 1 <= c.num_experts_per_tok <= c.topk_group * (c.n_routed_experts // c.n_group):
            raise ValueError(f"{where}: num_experts_per_tok {c.num_experts_per_tok} must be in 1..the experts of "
                             f"the {c.topk_group} kept groups")
        if not 0 <= c.first_k_dense_replace <= c.num_hidden_layers:
            raise ValueError(f"{where}: first_k_dense_replace must be in 0..num_hidden_layers, "
                             f"found {c.first_k_dense_replace}")
        return c

    @classmethod
    def load(cls, path):
        with open(path) as f:
            return cls.from_hf(json.load(f), str(path))


def matmul_params_per_token(c):
    """Weights of the matrix products one token goes through: every matrix except the embedding table
    (a lookup), with num_experts_per_tok routed experts per MoE layer."""
    d, h = c.hidden_size, c.num_attention_heads
    attn = (c.q_lora_rank * d + h * c.qk_head_dim * c.q_lora_rank + (c.kv_lora_rank + c.qk_rope_head_dim) * d
            + h * (c.qk_nope_head_dim + c.v_head_dim) * c.kv_lora_rank + d * h * c.v_head_dim)
    dense = 3 * d * c.intermediate_size
    moe = (c.n_routed_experts * d + 3 * d * c.moe_intermediate_size * (c.num_experts_per_tok + c.n_shared_experts))
    ffn = sum(moe if c.is_moe(i) else dense for i in range(c.num_hidden_layers))
    return c.num_hidden_layers * attn + ffn + c.vocab_size * d


def train_flops_per_token(c, seq):
    """Training FLOPs of one token at sequence length `seq`: 3 x forward (backward = 2 x forward), where
    forward = 2 x matmul_params_per_token + attention; under the causal mask a token attends to (seq + 1) / 2
    positions on average, and per position and head the scores take 2·(nope + rope) and the weighted sum
    of values 2·v FLOPs:  6·N + 3·layers·heads·(nope + rope + v)·(seq + 1)."""
    attention = c.num_hidden_layers * c.num_attention_heads * (c.qk_head_dim + c.v_head_dim) * (seq + 1)
    return 3 * (2 * matmul_params_per_token(c) + attention)


# ----------------------------------------------------------------------------------------------------
# Modules (names as in HF's DeepseekV3ForCausalLM)

class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(c):
    """cos and sin of position t times frequency theta^(-2j/rope) for pair j: (max_positions, rope / 2)."""
    freqs = c.rope_theta ** (-torch.arange(0, c.qk_rope_head_dim, 2, dtype=torch.float64) / c.qk_rope_head_dim)
    angles = torch.outer(torch.arange(c.max_position_embeddings, dtype=torch.float64), freqs)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x, cos, sin):
    """Rotates the adjacent pairs (x[2j], x[2j+1]) of x (b, s, heads, rope) by the angles of cos/sin (s, rope/2)."""
    pairs = x.unflatten(-1, (-1, 2))                                              # (b, s, heads, rope/2, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    cos, sin = cos[:, None, :], sin[:, None, :]                                   # (s, 1, rope/2)
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


class Attention(nn.Module):
    """Multi-head latent attention, computed the direct way: per-head keys and values are expanded from
    the latent, then softmax(q kᵀ · scale + causal mask) v."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        h = c.num_attention_heads
        self.q_a_proj = nn.Linear(c.hidden_size, c.q_lora_rank, bias=False)
        self.q_a_layernorm = RMSNorm(c.q_lora_rank, c.rms_norm_eps)
        self.q_b_proj = nn.Linear(c.q_lora_rank, h * c.qk_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(c.hidden_size, c.kv_lora_rank + c.qk_rope_head_dim, bias=False)
        self.kv_a_layernorm = RMSNorm(c.kv_lora_rank, c.rms_norm_eps)
        self.kv_b_proj = nn.Linear(c.kv_lora_rank, h * (c.qk_nope_head_dim + c.v_head_dim), bias=False)
        self.o_proj = nn.Linear(h * c.v_head_dim, c.hidden_size, bias=False)
        self.scale = c.qk_head_dim ** -0.5

    def forward(self, x, cos, sin, mask):
        c = self.c
        b, s, _ = x.shape
        h, nope, rope = c.num_attention_heads, c.qk_nope_head_dim, c.qk_rope_head_dim
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x))).view(b, s, h, c.qk_head_dim)
        q_nope, q_pe = q.split([nope, rope], dim=-1)
        latent, k_pe = self.kv_a_proj_with_mqa(x).split([c.kv_lora_rank, rope], dim=-1)
        kv = self.kv_b_proj(self.kv_a_layernorm(latent)).view(b, s, h, nope + c.v_head_dim)
        k_nope, v = kv.split([nope, c.v_head_dim], dim=-1)
        k_pe = apply_rope(k_pe.unsqueeze(2), cos, sin)                            # (b, s, 1, rope): shared by the heads
        q = torch.cat([q_nope, apply_rope(q_pe, cos, sin)], dim=-1).transpose(1, 2)           # (b, h, s, nope + rope)
        k = torch.cat([k_nope, k_pe.expand(b, s, h, rope)], dim=-1).transpose(1, 2)          # (b, h, s, nope + rope)
        scores = torch.matmul(q, k.transpose(-2, -1)) * self.scale + mask                    # (b, h, s, s)
        out = torch.matmul(scores.softmax(dim=-1), v.transpose(1, 2))                        # (b, h, s, v)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, h * c.v_head_dim))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, dim, width):
        super().__init__()
        self.gate_proj = nn.Linear(dim, width, bias=False)
        self.up_proj = nn.Linear(dim, width, bias=False)
        self.down_proj = nn.Linear(width, dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Gate(nn.Module):
    """The router: x (tokens, dim) -> weights (tokens, k) and expert indices (tokens, k)."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        self.weight = nn.Parameter(torch.empty(c.n_routed_experts, c.hidden_size))
        # Load-balancing bias, updated outside the gradient step; it only changes which experts are chosen.
        self.register_buffer("e_score_correction_bias", torch.zeros(c.n_routed_experts))

    def forward(self, x):
        c = self.c
        scores = torch.sigmoid(F.linear(x, self.weight))                          # (tokens, experts)
        biased = (scores + self.e_score_correction_bias).detach()
        if c.n_group > 1:
            grouped = biased.view(x.size(0), c.n_group, -1)                       # (tokens, groups, experts / group)
            group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)             # (tokens, groups)
            kept = group_scores.topk(c.topk_group, dim=-1).indices
            dropped = torch.ones_like(group_scores, dtype=torch.bool).scatter_(1, kept, False)
            biased = grouped.masked_fill(dropped.unsqueeze(-1), float("-inf")).flatten(1)
        indices = biased.topk(c.num_experts_per_tok, dim=-1).indices             # (tokens, k)
        weights = scores.gather(1, indices)
        if c.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights * c.routed_scaling_factor, indices


class MoE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gate = Gate(c)
        self.experts = nn.ModuleList(MLP(c.hidden_size, c.moe_intermediate_size) for _ in range(c.n_routed_experts))
        self.shared_experts = MLP(c.hidden_size, c.moe_intermediate_size * c.n_shared_experts)

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])                                              # (tokens, dim)
        weights, indices = self.gate(x)
        y = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(indices == e)
            if token.numel() == 0:
                continue                                                          # no token chose it: not run
            y.index_add_(0, token, expert(x.index_select(0, token)) * weights[token, slot].unsqueeze(-1))
        return (y + self.shared_experts(x)).view(shape)


class DecoderLayer(nn.Module):
    def __init__(self, c, layer):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = MoE(c) if c.is_moe(layer) else MLP(c.hidden_size, c.intermediate_size)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(c, i) for i in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class DeepseekV3(nn.Module):
    """tokens (b, s) -> logits (b, s, vocab); state dict under HF DeepseekV3ForCausalLM names."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        self.model = Decoder(c)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        cos, sin = rope_tables(c)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def init_weights(self, std=0.02):
        """Matrices and the embedding N(0, std²), norm weights 1, routing bias 0 (uses torch's global RNG)."""
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=std)
            else:
                nn.init.ones_(p)
        for name, b in self.named_buffers():
            if name.endswith("e_score_correction_bias"):
                nn.init.zeros_(b)

    def forward(self, tokens):
        s = tokens.size(1)
        if s > self.c.max_position_embeddings:
            raise ValueError(f"sequence length {s} exceeds max_position_embeddings {self.c.max_position_embeddings}")
        cos, sin = self.rope_cos[:s], self.rope_sin[:s]
        mask = torch.full((s, s), float("-inf")).triu(1)                          # (s, s): -inf above the diagonal
        x = self.model.embed_tokens(tokens)                                       # (b, s, dim)
        for layer in self.model.layers:
            x = layer(x, cos, sin, mask)
        return self.lm_head(self.model.norm(x))

    def loss(self, tokens):
        """Mean cross-entropy of predicting tokens[:, 1:] from the logits at [:, :-1]."""
        logits = self(tokens)
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())


# ----------------------------------------------------------------------------------------------------
# safetensors files: u64 little-endian header size, JSON header {name: dtype, shape, data_offsets}, data.

SAFETENSORS_DTYPES = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64, "I32": torch.int32}


def read_safetensors(path):
    data = Path(path).read_bytes()
    if len(data) < 8:
        raise ValueError(f"{path}: {len(data)} bytes, too short for a safetensors header")
    size = struct.unpack("<Q", data[:8])[0]
    if 8 + size > len(data):
        raise ValueError(f"{path}: header of {size} bytes does not fit in the file of {len(data)} bytes")
    tensors = {}
    for name, info in json.loads(data[8:8 + size]).items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}, "
                             f"expected one of {list(SAFETENSORS_DTYPES)}")
        dtype = SAFETENSORS_DTYPES[info["dtype"]]
        begin, end = (8 + size + o for o in info["data_offsets"])
        expected = math.prod(info["shape"]) * torch.tensor([], dtype=dtype).element_size()
        if end > len(data) or end - begin != expected:
            raise ValueError(f"{path}: tensor {name} of shape {info['shape']} has data_offsets "
                             f"{info['data_offsets']}, expected {expected} bytes inside the file")
        tensors[name] = torch.frombuffer(bytearray(data[begin:end]), dtype=dtype).reshape(info["shape"])
    return tensors


# ----------------------------------------------------------------------------------------------------
# Self-test against the golden data of tiny-v3

def rel_err(ours, gold):
    """max|ours - gold| / max|gold|."""
    return float((ours.double() - gold).abs().max() / gold.abs().max())


def self_test(folder, tol):
    c = Config.load(folder / "config.json")
    torch.set_default_dtype(torch.float32)
    model = DeepseekV3(c)
    model.load_state_dict(read_safetensors(folder / "model.safetensors"))        # strict: every name must match
    gold = read_safetensors(folder / "golden.safetensors")
    tokens = gold["inputs.tokens"]

    picks = {}
    for i, layer in enumerate(model.model.layers):
        if c.is_moe(i):
            layer.mlp.gate.register_forward_hook(lambda mod, inp, out, i=i: picks.__setitem__(i, out[1]))
    logits = model(tokens)
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()

    failures = 0

    def check(name, err, limit):
        nonlocal failures
        failures += err > limit
        print(f"{name:<44} {err:.3e}  {'ok' if err <= limit else f'FAILED (limit {limit:.0e})'}")

    check("logits (max rel error)", rel_err(logits.detach(), gold["expected.logits"]), tol)
    check("loss (rel error)", rel_err(loss.detach(), gold["expected.loss"]), tol)
    worst, worst_name, missing = 0.0, None, []
    for name, p in model.named_parameters():
        key = "expected.grad." + name
        if key in gold:
            if p.grad is None:
                missing.append(name)
                continue
            err = rel_err(p.grad, gold[key])
            if err >= worst:
                worst, worst_name = err, name
        elif p.grad is not None and bool(p.grad.any()):
            missing.append(name)                  # the reference has no gradient for it: it must be zero
    check(f"gradients (worst of {sum(k.startswith('expected.grad.') for k in gold)} tensors)", worst, tol)
    print(f"  worst: {worst_name}")
    if missing:
        failures += 1
        print(f"gradient present on one side only: {missing}  FAILED")
    for i, chosen in picks.items():
        differ = int((chosen.sort(dim=-1).values != gold[f"expected.topk.layer{i}"]).any(dim=-1).sum())
        failures += differ > 0
        print(f"{f'experts chosen, layer {i} (tokens differing)':<44} {differ}  {'ok' if differ == 0 else 'FAILED'}")
    print("PASS" if failures == 0 else f"FAIL ({failures} checks)")
    return failures == 0


def main():
    ap = argparse.ArgumentParser(description="Eager PyTorch DeepSeek-V3 model of the CPU training benchmark.")
    ap.add_argument("--self-test", action="store_true", help="check against golden data and exit")
    ap.add_argument("--data", type=Path, default=REPO / "tests" / "data" / "tiny-v3",
                    help="golden folder: config.json, model.safetensors, golden.safetensors (default: tiny-v3)")
    ap.add_argument("--tol", type=float, default=1e-4, help="relative error limit of logits, loss and gradients")
    ap.add_argument("--config", type=Path, help="print the parameter and FLOP counts of this HF config.json")
    ap.add_argument("--seq", type=int, default=128, help="sequence length of the attention FLOPs (with --config)")
    args = ap.parse_args()
    if args.self_test:
        return 0 if self_test(args.data, args.tol) else 1
    if args.config:
        c = Config.load(args.config)
        total = sum(p.numel() for p in DeepseekV3(c).parameters())
        print(f"trained_params {total}")
        print(f"matmul_params_per_token {matmul_params_per_token(c)}")
        print(f"training_flops_per_token {train_flops_per_token(c, args.seq)} (seq {args.seq})")
        return 0
    ap.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
