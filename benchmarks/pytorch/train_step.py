#!/usr/bin/python3
"""Times f32 training steps of the eager PyTorch DeepSeek-V3 model (model.py) on the CPU.

One step: zero the gradients, forward, next-token cross-entropy, backward, clip the global gradient norm,
AdamW update (torch.optim.AdamW). Weights are random (N(0, 0.02²) matrices, unit norms), tokens uniformly
random and new every step. The step time is the median over the timed steps after the warm-up steps;
tokens per second = batch · seq / step time.

Output: one line per timed step, then a JSON line with every number, then `tokens_per_s X` and
`step_ms Y` as the last two lines.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True  # keep the source folder free of __pycache__
import torch  # noqa: E402

from model import REPO, Config, DeepseekV3, matmul_params_per_token, train_flops_per_token  # noqa: E402


def positive(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, found {text}")
    return value


def non_negative(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, found {text}")
    return value


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=REPO / "examples" / "models" / "bench-small.json",
                    help="HF config.json of the model (default: examples/models/bench-small.json)")
    ap.add_argument("--batch", type=positive, default=8)
    ap.add_argument("--seq", type=positive, default=128)
    ap.add_argument("--steps", type=positive, default=10, help="timed steps")
    ap.add_argument("--warmup", type=non_negative, default=2, help="untimed steps before the timed ones")
    ap.add_argument("--threads", type=positive, default=2, help="torch.set_num_threads")
    ap.add_argument("--clip", type=float, default=1.0, help="max global gradient norm (0: no clipping)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    c = Config.load(args.config)
    if not 2 <= args.seq <= c.max_position_embeddings:
        ap.error(f"--seq must be in 2..max_position_embeddings ({c.max_position_embeddings}) of {args.config}, "
                 f"found {args.seq}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = DeepseekV3(c)
    model.init_weights(std=0.02)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    data = torch.Generator().manual_seed(args.seed + 1)

    times, losses = [], []
    for step in range(args.warmup + args.steps):
        tokens = torch.randint(c.vocab_size, (args.batch, args.seq), generator=data)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model.loss(tokens)
        loss.backward()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        elapsed = time.perf_counter() - t0
        losses.append(loss.item())
        if step >= args.warmup:
            times.append(elapsed)
            print(f"step {step - args.warmup} loss {losses[-1]:.4f} ms {elapsed * 1e3:.1f}", flush=True)

    step_s = statistics.median(times)
    tokens_per_s = args.batch * args.seq / step_s
    flops = train_flops_per_token(c, args.seq)
    result = {
        "impl": "pytorch-eager", "torch": torch.__version__, "threads": torch.get_num_threads(),
        "batch": args.batch, "seq": args.seq, "steps": args.steps, "warmup": args.warmup, "clip": args.clip,
        "trained_params": sum(p.numel() for p in model.parameters()),
        "matmul_params_per_token": matmul_params_per_token(c), "training_flops_per_token": flops,
        "step_ms": step_s * 1e3, "step_ms_min": min(times) * 1e3, "step_ms_max": max(times) * 1e3,
        "tokens_per_s": tokens_per_s, "achieved_gflops": flops * tokens_per_s / 1e9,
        "first_loss": losses[0], "last_loss": losses[-1],
    }
    print(json.dumps(result))
    print(f"tokens_per_s {tokens_per_s:.1f}")
    print(f"step_ms {step_s * 1e3:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
