"""rCM distillation: a few-step student from a trained teacher.

    rcm.py          the objective (TrigFlow wrapper, sCM with torch.func.jvp tangents, DMD, fake score)
                    and the few-step sampler (StudentSampler)
    distiller.py    Distiller: the rCM iteration on the training runner (FSDP2, CP, SAC, EMA, resume)

May import: cosmos_kernels, cosmos_models._deps, nets/, data/, sampling/, training/. Nothing from
perf/, cli/ or bench/.
"""
