"""Per-kernel GPU time of one `wit bench train` step, from the CSV that bench/gpu-pack.sh's device
script saves (`ncu.csv.gz`: Nsight Compute's gpu__time_duration.sum of every launch).

    python3 bench/ncu_step.py ncu.csv.gz [ROWS]

The step runs from the first launch after the synthetic batch's curand kernels to the end of the
first run of `wit_adamw` launches; matrix-product kernels (cuBLAS, CUTLASS, nvjet) are summed as one
row. Prints a Markdown table: kernel, launches, ms, share of the step.
"""
import collections
import csv
import gzip
import sys

UNITS = {"ns": 1, "us": 1e3, "ms": 1e6, "nsecond": 1, "usecond": 1e3, "msecond": 1e6}


def launches(path):
    with gzip.open(path, "rt") as f:
        lines = [line for line in f if line.startswith('"')]
    for row in csv.DictReader(lines):
        if row.get("Metric Name") == "gpu__time_duration.sum":
            ns = float(row["Metric Value"].replace(",", "")) * UNITS[row["Metric Unit"]]
            yield row["Kernel Name"].split("(")[0], ns


def main():
    rows = list(launches(sys.argv[1]))
    start = max(i for i, (k, _) in enumerate(rows) if "gen_sequenced" in k and i < 1000) + 1
    adam = [i for i, (k, _) in enumerate(rows) if k.startswith("wit_adamw") and i > start]
    end = next(i for j, i in enumerate(adam) if j + 1 == len(adam) or adam[j + 1] != i + 1)
    step = rows[start : end + 1]
    total = sum(ns for _, ns in step)
    by_kernel = collections.defaultdict(lambda: [0, 0.0])
    for name, ns in step:
        if any(s in name.lower() for s in ("gemm", "cutlass", "nvjet", "sm90")):
            name = "[matrix products]"
        by_kernel[name[:60]][0] += 1
        by_kernel[name[:60]][1] += ns
    print(f"step: launches {start}..{end}, {len(step)} kernels, {total / 1e6:.1f} ms of GPU time")
    print("| kernel | launches | ms | share |\n|---|---|---|---|")
    ranked = sorted(by_kernel.items(), key=lambda kv: -kv[1][1])
    for name, (n, ns) in ranked[: int(sys.argv[2]) if len(sys.argv) > 2 else 20]:
        print(f"| {name} | {n} | {ns / 1e6:.2f} | {100 * ns / total:.1f}% |")


main()
