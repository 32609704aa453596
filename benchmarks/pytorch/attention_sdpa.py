#!/usr/bin/python3
"""Times PyTorch's causal scaled_dot_product_attention on the GPU at the shapes of dsx-bench-gpu's
attention section (benchmarks/gpu/attention.cu): bf16, qk 192, v 128, the same cases and FLOP counts,
so the two tables compare line by line.

For each case and each SDPA backend that accepts it (flash, memory-efficient, cuDNN), the forward and
forward + backward are timed with CUDA events (median of 10 groups after 3 warm-up calls); backward =
(forward + backward) − forward. Inputs are N(0, 1), new for every case. Prints a markdown table.
"""

import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

QK, V = 192, 128
CASES = [("gpu_1b batch", 8, 2048, 16), ("one sequence, 16 heads", 1, 4096, 16), ("V3 heads", 1, 4096, 128)]
BACKENDS = [("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
            ("cudnn", SDPBackend.CUDNN_ATTENTION)]


def median_ms(fn, groups=10, calls=3):
    for _ in range(3):
        fn()
    times = []
    for _ in range(groups):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop) / calls)
    return statistics.median(times)


def main():
    if not torch.cuda.is_available():
        sys.exit("no CUDA device")
    print(f"PyTorch {torch.__version__}, {torch.cuda.get_device_name()}")
    print()
    print("| case | backend | forward | TFLOP/s | backward | TFLOP/s |")
    print("|---|---|---|---|---|---|")
    for name, batch, seq, heads in CASES:
        pairs = batch * heads * seq * (seq + 1) / 2
        fwd_flops, bwd_flops = 2 * pairs * (QK + V), 2 * pairs * (3 * QK + 2 * V)
        gen = torch.Generator(device="cuda").manual_seed(7)
        q = torch.randn(batch, heads, seq, QK, device="cuda", dtype=torch.bfloat16, generator=gen, requires_grad=True)
        k = torch.randn(batch, heads, seq, QK, device="cuda", dtype=torch.bfloat16, generator=gen, requires_grad=True)
        v = torch.randn(batch, heads, seq, V, device="cuda", dtype=torch.bfloat16, generator=gen, requires_grad=True)
        dout = torch.randn(batch, heads, seq, V, device="cuda", dtype=torch.bfloat16, generator=gen)
        for label, backend in BACKENDS:
            try:
                with sdpa_kernel(backend):
                    def forward():
                        with torch.no_grad():
                            F.scaled_dot_product_attention(q, k, v, is_causal=True)

                    def both():
                        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                        out.backward(dout)

                    f = median_ms(forward)
                    fb = median_ms(both)
            except RuntimeError as e:
                print(f"| {name} | {label} | not supported: {str(e).splitlines()[0][:80]} | | | |")
                continue
            b = fb - f
            print(f"| {name} | {label} | {f:.3f} ms | {fwd_flops / f / 1e9:.0f} | {b:.3f} ms | {bwd_flops / b / 1e9:.0f} |")
        q.grad = k.grad = v.grad = None


if __name__ == "__main__":
    main()
