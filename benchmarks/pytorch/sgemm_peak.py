#!/usr/bin/python3
"""f32 GEMM peak through torch.mm on the CPU: the best GFLOP/s of `--reps` products C = A·Bᵀ of n×n
matrices after one warm-up product (the shape dsx-<model> bench sgemm times). The result is checked
against a float64 product first.

Prints `threads N` and `sgemm_gflops X`.
"""

import argparse
import sys
import time

import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    if args.threads <= 0 or args.n <= 0 or args.reps <= 0:
        ap.error("--threads, --n and --reps must be positive")
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(args.n, args.n, generator=gen)
    b = torch.randn(args.n, args.n, generator=gen)
    c = torch.mm(a, b.t())
    err = float((c.double() - a.double() @ b.double().t()).abs().max())
    if err > 1e-3 * args.n ** 0.5:                # f32 rounding of n-term sums of unit-variance products
        print(f"error: torch.mm differs from the float64 product by {err:.3e}", file=sys.stderr)
        return 1
    best = 0.0
    for _ in range(args.reps):
        t0 = time.perf_counter()
        torch.mm(a, b.t(), out=c)
        best = max(best, 2.0 * args.n ** 3 / (time.perf_counter() - t0) / 1e9)
    print(f"threads {torch.get_num_threads()}")
    print(f"sgemm_gflops {best:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
