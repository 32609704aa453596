#!/usr/bin/python3
"""CPU training benchmark: dsx against an eager PyTorch implementation of the same model and step.

In one run, each with the same number of threads, repeated in --rounds interleaved rounds (the machine may be
shared, so one measurement can be off by tens of percent):
  1. the f32 GEMM peak that model-FLOP utilisation (MFU) is measured against: `dsx-bench-small bench sgemm`,
     or torch.mm (benchmarks/pytorch/sgemm_peak.py) when the dsx tool is missing; torch.mm's peak is
     measured as well and shown for reference;
  2. `dsx-bench-small bench train` (forward, backward, gradient clipping, AdamW in f32);
  3. benchmarks/pytorch/train_step.py, the same model and step in eager PyTorch.
It then writes benchmarks/results/<machine>.md: the machine, the versions, the side-by-side table, the
ratio dsx / PyTorch and the FLOP count behind the MFU. Without the dsx tool the table shows PyTorch only.

Run it with a python3 that has torch (Debian's python3-torch), from any directory:
  benchmarks/run_cpu_bench.py --build-dir build --steps 10
"""

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODEL = "bench-small"
MODEL_CONFIG = REPO / "examples" / "models" / "bench-small.json"
TARGET_RATIO = 3.0      # dsx tokens/s over PyTorch eager tokens/s
TARGET_MFU = 0.40       # dsx training FLOP/s over the measured SGEMM peak


def shown(path):
    """A path as written into the results: relative to the repository when inside it, else its name."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return path.name


def load_average():
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_slug(cpu, cores):
    words = re.sub(r"\((r|tm)\)|cpu|processor|@.*$", " ", cpu.lower())
    slug = re.sub(r"[^a-z0-9]+", "-", words).strip("-") or "cpu"
    return f"{slug}-{cores}c"


def git_revision():
    def git(*args):
        r = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None
    commit = git("rev-parse", "--short", "HEAD")
    if commit is None:
        return "unknown (not a git checkout)"
    return commit + (" with uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else "")


class StepFailed(Exception):
    pass


def run(cmd, threads):
    """Runs cmd with OMP/OpenBLAS threads set; returns (stdout, load average before, load average after).
    Raises StepFailed with the command's last output lines when it fails."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    print("$", " ".join(shown(c) if os.sep in c else c for c in cmd), flush=True)
    before = load_average()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    after = load_average()
    sys.stdout.write(r.stdout)
    if r.returncode != 0:
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-5:])
        raise StepFailed(f"`{' '.join(shown(c) if os.sep in c else c for c in cmd)}` exited with status "
                         f"{r.returncode}:\n{tail}")
    return r.stdout, before, after


def numbers(text, keys, what):
    """The values of `key value` lines; StepFailed naming the first missing key."""
    found = {}
    for line in text.splitlines():
        m = re.match(r"^(\w+)\s+([-+0-9.eE]+)\s*$", line.strip())
        if m:
            found[m.group(1)] = float(m.group(2))
    for k in keys:
        if k not in found:
            raise StepFailed(f"{what}: no line `{k} <number>` in its output")
    return found


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build-dir", type=Path, default=REPO / "build",
                    help="CMake build folder holding examples/dsx-bench-small (default: build)")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps of each implementation")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved rounds of all measurements; the table shows each side's median round")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out-dir", type=Path, default=HERE / "results")
    ap.add_argument("--machine", help="file name of the results (default: CPU model and core count)")
    args = ap.parse_args()
    for name in ("steps", "batch", "seq", "threads", "rounds"):
        if getattr(args, name) <= 0:
            ap.error(f"--{name.replace('_', '-')} must be positive, found {getattr(args, name)}")
    if args.warmup < 0:
        ap.error(f"--warmup must be non-negative, found {args.warmup}")

    sys.dont_write_bytecode = True
    sys.path.insert(0, str(HERE / "pytorch"))
    from model import Config, matmul_params_per_token, train_flops_per_token

    config = Config.load(MODEL_CONFIG)
    flops = train_flops_per_token(config, args.seq)
    cpu, cores = cpu_model(), os.cpu_count()
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    tool = args.build_dir / "examples" / f"dsx-{MODEL}"
    have_tool = tool.is_file() and os.access(tool, os.X_OK)
    notes, loads = [], []
    if not have_tool:
        notes.append(f"dsx-{MODEL} was not found at `{shown(tool)}` (build it with "
                     f"`cmake --build {shown(args.build_dir)} --target dsx-{MODEL}`): PyTorch only.")

    torch_peaks, dsx_peaks, dsx_runs, pt_runs = [], [], [], []
    dsx_failed = False
    for round_ in range(1, args.rounds + 1):
        print(f"== round {round_} of {args.rounds}", flush=True)
        # 1. SGEMM peak
        out, before, after = run([sys.executable, str(HERE / "pytorch" / "sgemm_peak.py"),
                                  "--threads", str(args.threads)], args.threads)
        torch_peaks.append(numbers(out, ["sgemm_gflops"], "sgemm_peak.py")["sgemm_gflops"])
        loads.append((f"round {round_}: torch.mm SGEMM peak", before, after))
        if have_tool and not dsx_failed:
            try:
                out, before, after = run([str(tool), "bench", "sgemm", "--threads", str(args.threads)], args.threads)
                dsx_peaks.append(numbers(out, ["sgemm_gflops"], f"dsx-{MODEL} bench sgemm")["sgemm_gflops"])
                loads.append((f"round {round_}: dsx-{MODEL} bench sgemm", before, after))
                # 2. dsx training step
                out, before, after = run([str(tool), "bench", "train", "--threads", str(args.threads),
                                          "--batch", str(args.batch), "--seq", str(args.seq),
                                          "--steps", str(args.steps), "--warmup", str(args.warmup)], args.threads)
                dsx_runs.append(numbers(out, ["tokens_per_s", "step_ms", "mfu"], f"dsx-{MODEL} bench train"))
                loads.append((f"round {round_}: dsx-{MODEL} bench train", before, after))
            except StepFailed as e:
                notes.append(f"The dsx benchmark failed, so the table shows PyTorch only. {e}")
                dsx_failed = True
                dsx_runs = []

        # 3. PyTorch eager step
        out, before, after = run([sys.executable, str(HERE / "pytorch" / "train_step.py"),
                                  "--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps),
                                  "--warmup", str(args.warmup), "--threads", str(args.threads)], args.threads)
        json_lines = [line for line in out.splitlines() if line.startswith("{")]
        if not json_lines:
            raise StepFailed("train_step.py: no JSON line in its output")
        pt_runs.append(json.loads(json_lines[-1]))
        loads.append((f"round {round_}: PyTorch train_step.py", before, after))

    def median_run(runs):
        """The run with the median tokens/s (the lower middle one for an even count)."""
        return sorted(runs, key=lambda r: r["tokens_per_s"])[(len(runs) - 1) // 2]

    # MFU is taken against the highest SGEMM rate any round reached: the machine's peak, not a slow round's.
    torch_peak = max(torch_peaks)
    if dsx_peaks:
        peak, peak_source = max(dsx_peaks), f"dsx-{MODEL} bench sgemm (host backend GEMM), the highest of {len(dsx_peaks)} rounds"
    else:
        peak, peak_source = torch_peak, "torch.mm, 1024³ f32 A·Bᵀ, best of 5 (no measurement by dsx)"
    dsx = median_run(dsx_runs) if dsx_runs else None
    pt = median_run(pt_runs)
    if dsx and "training_flops_per_token" in dsx and int(dsx["training_flops_per_token"]) != flops:
        notes.append(f"dsx counts {int(dsx['training_flops_per_token'])} training FLOPs per token, this "
                     f"script {flops}: the MFU of the two columns rests on different counts.")

    # Results
    def mfu(tokens_per_s):
        return flops * tokens_per_s / 1e9 / peak

    columns = [("PyTorch eager", pt["tokens_per_s"], pt["step_ms"])]
    if dsx:
        columns.insert(0, (f"dsx (dsx-{MODEL})", dsx["tokens_per_s"], dsx["step_ms"]))
    header = "| | " + " | ".join(c[0] for c in columns) + " |"
    rows = [
        header, "|---" * (len(columns) + 1) + "|",
        "| step time, median (ms) | " + " | ".join(f"{c[2]:.1f}" for c in columns) + " |",
        "| tokens/s | " + " | ".join(f"{c[1]:.0f}" for c in columns) + " |",
        "| achieved GFLOP/s | " + " | ".join(f"{flops * c[1] / 1e9:.2f}" for c in columns) + " |",
        "| MFU (vs SGEMM peak below) | " + " | ".join(f"{100 * mfu(c[1]):.1f} %" for c in columns) + " |",
    ]
    if dsx:
        ratio = dsx["tokens_per_s"] / pt["tokens_per_s"]
        dsx_mfu = mfu(dsx["tokens_per_s"])
        summary = [
            f"**dsx / PyTorch: {ratio:.2f}×** tokens/s (target ≥ {TARGET_RATIO:g}×: "
            f"{'met' if ratio >= TARGET_RATIO else 'not met'}); dsx MFU {100 * dsx_mfu:.1f} % "
            f"(target ≥ {100 * TARGET_MFU:.0f} %: {'met' if dsx_mfu >= TARGET_MFU else 'not met'}).",
            "",
            f"dsx's own report in that round: `tokens_per_s {dsx['tokens_per_s']:.1f}`, `mfu {dsx['mfu']:.3f}`"
            + (f" against the peak it measured after its steps, {dsx['sgemm_gflops']:.1f} GFLOP/s"
               if "sgemm_gflops" in dsx else "") + ".",
        ]
    else:
        summary = ["No dsx column: " + " ".join(notes)]
    rounds = ["| round | " + (f"dsx tokens/s | dsx MFU | " if dsx_runs else "") + "PyTorch tokens/s | "
              + ("dsx / PyTorch | dsx SGEMM GFLOP/s | " if dsx_runs else "") + "torch.mm GFLOP/s |",
              "|---" * (7 if dsx_runs else 3) + "|"]
    for i in range(args.rounds):
        cells = [str(i + 1)]
        if dsx_runs:
            cells += [f"{dsx_runs[i]['tokens_per_s']:.0f}", f"{100 * mfu(dsx_runs[i]['tokens_per_s']):.1f} %"]
        cells.append(f"{pt_runs[i]['tokens_per_s']:.0f}")
        if dsx_runs:
            cells += [f"{dsx_runs[i]['tokens_per_s'] / pt_runs[i]['tokens_per_s']:.2f}×", f"{dsx_peaks[i]:.1f}"]
        cells.append(f"{torch_peaks[i]:.1f}")
        rounds.append("| " + " | ".join(cells) + " |")
    busiest = max(float(load.split()[0]) for _, b, a in loads for load in (b, a))
    # The benchmark's own threads account for up to `threads` of the load average (1-minute decay, so it
    # carries from one measurement into the next); more than half a core beyond that was someone else's.
    if busiest > max(cores, args.threads) + 0.5:
        summary += ["", f"**Warning: the 1-minute load average reached {busiest:.2f} on {cores} cores during the "
                        f"run.** Other processes held the cores, so these timings are not comparable with those of "
                        f"an idle machine (a {args.threads}-thread step waits for its threads to be scheduled)."]
    n_matmul = matmul_params_per_token(config)
    c = config
    text = "\n".join([
        f"# CPU training benchmark: {cpu}, {cores} cores",
        "",
        f"Written by `benchmarks/run_cpu_bench.py` on {started}. Model `{MODEL}` "
        f"(`{shown(MODEL_CONFIG)}`), f32, batch {args.batch} × {args.seq} tokens, threads: {args.threads} for "
        f"each measurement, step time: median of {args.steps} timed steps after {args.warmup} untimed, in each of "
        f"{args.rounds} interleaved rounds; each column shows its implementation's median round (by tokens/s), and "
        f"MFU is against the highest SGEMM rate of all rounds. A step is "
        f"forward, next-token cross-entropy, backward, gradient clipping to norm 1 and AdamW (lr 1e-3, betas "
        f"0.9/0.95, weight decay 0.1) on random tokens; tokens/s = batch · seq / step time.",
        "",
        *rows,
        "",
        *summary,
        "",
        "Every round (MFU against the same peak):",
        "",
        *rounds,
        "",
        f"SGEMM peak: **{peak:.1f} GFLOP/s** from {peak_source}; torch.mm reaches {torch_peak:.1f} GFLOP/s "
        f"on the same shape and threads (highest of {len(torch_peaks)} rounds).",
        "",
        "## Model FLOPs per token",
        "",
        "training FLOPs per token = 3 · (2 · N + A): backward counted as twice the forward, where",
        "",
        f"- N = {n_matmul:,} weights of the matrix products one token goes through: all matrices except the "
        f"embedding table (a lookup), including the router and the output head, with "
        f"{c.num_experts_per_tok} routed + {c.n_shared_experts} shared experts per MoE layer;",
        f"- A = layers · heads · (qk_nope + qk_rope + v) · (seq + 1) = {c.num_hidden_layers} · "
        f"{c.num_attention_heads} · ({c.qk_nope_head_dim} + {c.qk_rope_head_dim} + {c.v_head_dim}) · "
        f"{args.seq + 1}: scores and weighted values, 2 FLOPs per multiply-add, over the (seq + 1) / 2 "
        f"positions a token sees on average under the causal mask;",
        f"- total at seq {args.seq}: **{flops:,}** FLOPs per token. MFU = FLOPs per token · tokens/s / SGEMM peak.",
        "",
        "## Machine and versions",
        "",
        f"- CPU: {cpu}, {cores} logical cores; kernel {platform.release()}",
        f"- Python {platform.python_version()}, torch {pt['torch']} ({pt['threads']} threads)",
        f"- dsx: commit {git_revision()}" + ("" if have_tool else " (tool not built)"),
        "- load average (1, 5, 15 min) before → after each measurement (the machine may be shared):",
        *[f"  - {name}: {b} → {a}" for name, b, a in loads],
        *([""] + [f"Note: {n}" for n in notes] if dsx and notes else []),
        "",
        "PyTorch's numbers as JSON:",
        "",
        "```",
        json.dumps(pt),
        "```",
        "",
    ])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"{args.machine or machine_slug(cpu, cores)}.md"
    path.write_text(text)
    print(f"wrote {shown(path)}")
    if dsx:
        print(f"ratio_dsx_over_pytorch {dsx['tokens_per_s'] / pt['tokens_per_s']:.2f}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except StepFailed as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
