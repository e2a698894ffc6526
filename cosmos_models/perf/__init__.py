"""Performance measurement of the library's own steps: MFU of the trainer's step, part ranges,
timing, baselines. (The analytic FLOPs are nets/flops.py: a property of the network.)

    timing.py       timers (CUDA events / perf_counter), a measured matmul peak, memory peaks, the
                    environment record every result carries
    ranges.py       PartRanges: named NVTX / profiler / timing ranges around the model's parts
    mfu.py          MFU of the trainer's own training step (the step `cosmos train` runs)
    baselines.py    MFU baselines: record and check for regressions
    report.py       tables and JSON files of results

May import: cosmos_kernels, cosmos_models._deps, nets/, data/, sampling/, training/, distill/.
Nothing from cli/ or bench/.
"""
