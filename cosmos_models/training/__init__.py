"""Training: the flow-matching objective and the machinery of a run.

    objective.py     flow matching: timestep sampling, conditioning frames, the loss
    runner.py        the run scaffold training and distillation share: process layout, run folder,
                     data, the loop, logging, save/resume of every state (RNG included)
    trainer.py       Trainer: one flow-matching step (FSDP2, Ulysses CP, SAC, AdamW, EMA) on the runner
    parallel.py      process layout (replicate x shard x cp), FSDP2 sharding, feature probes
    sac.py           selective activation checkpointing policies (official names)
    ema.py           power / constant EMA, sharded like the parameters
    optim.py         the AdamW recipe, clipping and the update
    checkpointing.py atomic DCP checkpoint folders with a `latest` pointer
    run_folder.py    one run per folder: the lock, run.json (what the run was started with), drift checks
    loggers.py       --log-to: the log records in TensorBoard and/or Weights & Biases
    previews.py      --sample-every: preview videos from the EMA weights during training
    lora.py          --lora: peft adapters on the block projections, merge and adapter files
    faults.py        signals (SIGTERM/SIGINT: checkpoint, then exit 143/130), bad steps, OOM and disk-full
                     diagnosis, lost processes

May import: cosmos_kernels, cosmos_models._deps, nets/, data/, sampling/. Nothing from distill/,
perf/, cli/ or bench/.
"""
