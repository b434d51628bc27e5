#!/usr/bin/env python
"""CPU eval latency of zoo models against their timm twins on the same weights, interleaved.

Each zoo model loads its timm twin's (randomised) weights through the zoo's loading hook, the
outputs are checked equal, then both are timed alternately (a-b, b-a, ...) at batch 1 and 8 so
load drift hits both; the ratio is median(zoo) / median(timm) (< 1: the zoo is faster).

    python tools/bench_cpu_parity.py                       # the six families timm has, 1 thread
    python tools/bench_cpu_parity.py --models efficientvit_m0,shvit_s1 --repeats 60
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import timm
import torch

import vitzoo  # noqa: F401  (registers the zoo)
from vitzoo.cli.profile_timing import interleaved

ROOT = Path(__file__).resolve().parents[1]
TWINS = ("efficientvit_m0", "shvit_s1", "crossvit_tiny_240", "poolformerv2_s12", "caformer_s18",
         "convformer_s18", "swin_tiny_patch4_window7_224", "poolformer_s12")


def _randomize(model: torch.nn.Module) -> torch.nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) * 0.2 + 0.9 if t.ndim <= 1 else
                        torch.randn(t.shape, generator=g) * 0.02)
    return model


def _timer(model: torch.nn.Module, x: torch.Tensor):
    def run() -> float:
        start = time.perf_counter()
        model(x)
        return time.perf_counter() - start
    return run


def compare(name: str, batch: int, warmup: int, repeats: int) -> dict:
    twin = _randomize(timm.create_model(name)).eval()
    zoo = timm.create_model(f"vitzoo_{name}").eval()
    zoo.load_state_dict(twin.state_dict())  # timm's layout, converted by the family's filter
    x = torch.randn(batch, *twin.pretrained_cfg["input_size"])
    with torch.inference_mode():
        diff = (zoo(x) - twin(x)).abs().max().item()
        t_zoo, t_timm = interleaved(_timer(zoo, x), _timer(twin, x), warmup, repeats)
    z, t = statistics.median(t_zoo), statistics.median(t_timm)
    return dict(model=name, batch=batch, zoo_ms=1e3 * z, timm_ms=1e3 * t, ratio=z / t,
                zoo_min_ms=1e3 * min(t_zoo), timm_min_ms=1e3 * min(t_timm), max_abs_diff=diff)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(TWINS), help="timm names, comma-separated")
    p.add_argument("--batches", default="1,8", help="batch sizes, comma-separated")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs of each model")
    p.add_argument("--repeats", type=int, default=40, help="timed runs of each model")
    p.add_argument("--out", default=None, help="output stem (default benchmarks/results/cpu_parity_<date>)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            rows.append(compare(name, batch, args.warmup, args.repeats if batch == 1 else max(args.repeats // 4, 5)))
            r = rows[-1]
            print(f"{name:32s} b{batch}: zoo {r['zoo_ms']:8.2f} ms  timm {r['timm_ms']:8.2f} ms  "
                  f"ratio {r['ratio']:.3f}  (max|diff| {r['max_abs_diff']:.1e})", flush=True)
    stem = Path(args.out or ROOT / "benchmarks" / "results" / f"cpu_parity_{dt.date.today().isoformat()}")
    env = dict(date=dt.datetime.now().isoformat(timespec="seconds"), cpu=platform.processor() or platform.machine(),
               threads=args.threads, torch=torch.__version__, timm=timm.__version__,
               command="python tools/bench_cpu_parity.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    stem.with_suffix(".json").write_text(json.dumps(dict(env=env, rows=rows), indent=2))
    lines = [f"# CPU eval latency, zoo vs timm (same weights, interleaved, median of {args.repeats} at batch 1)",
             "", ", ".join(f"{k}: {v}" for k, v in env.items()), "",
             "| model | batch | zoo ms | timm ms | zoo / timm |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['batch']} | {r['zoo_ms']:.2f} | {r['timm_ms']:.2f} | {r['ratio']:.3f} |"
              for r in rows]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.md/.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
