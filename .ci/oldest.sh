#!/usr/bin/env bash
# CI's second leg: the oldest pair setup.py admits (torch 2.11 + Triton 3.6, the GPU image's), in a venv
# of its own. First bare (only what the GPU image is sure to have: no av, diffusers, tqdm, nvtx, ...):
# `pip install --no-deps`, `cosmos selfcheck`, the device-run dry run. Then the test extras and a
# shorter test selection: the kernels, the DiT, training and sampling (less the distillation quality
# test, ~80 s: a few-step student learning from a teacher is numerics leg 1 checks; what could differ
# on the oldest pair, the JVP kernels and the distiller's steps, runs here), the aspect-bucket run
# (loader logic), the overfit check (numerics) and the in-process kill/resume (leg 1's fault suite
# kills real processes; the distiller's resume test still checks DCP save/load on this pair), the
# trainer's two-process FSDP2 + context-parallel equality (the distiller's two-rank test runs FSDP2 and
# context parallel on this pair) and tests/test_deps.py (the bare selfcheck above is this pair's check
# that nothing needs an optional package).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${COSMOS_CI_OLDEST_VENV:-/tmp/cosmos-ci-oldest}"
rm -rf "$VENV"
python -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q -c .ci/oldest.txt torch triton numpy pybind11 ninja safetensors "setuptools>=70,<82" wheel \
    pytest pytest-timeout pytest-xdist
"$PY" -m pip install -q --no-deps --no-build-isolation -e .
"$PY" -c "import torch, triton, numpy; print('oldest leg: torch', torch.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__)"
(cd /tmp && "$PY" -c "import cosmos_kernels, cosmos_kernels._C; print('cosmos_kernels imports, _C built')")
"$PY" -m cosmos_models.cli selfcheck > /tmp/cosmos-ci-oldest-selfcheck.log
echo "oldest leg: cosmos selfcheck passed"
OUT="$(mktemp -d)" PYTHON="$PY" bench/device_run.sh --dry-run
"$PY" -m pip install -q -c .ci/oldest.txt --no-build-isolation -e ".[test]"
"$PY" -m pytest -q -rs -n 2 --dist loadfile -p no:cacheprovider -W ignore::DeprecationWarning \
    tests/test_dispatch.py tests/test_adaln.py tests/test_rope.py tests/test_flash_attention.py \
    tests/test_neighborhood_attention.py tests/test_ulysses.py tests/test_dit.py tests/test_trainer.py \
    tests/test_distill.py \
    --deselect tests/test_distill.py::test_distilled_student_4_step_samples_get_closer_to_the_teachers_35_step_samples \
    --deselect tests/test_trainer.py::test_aspect_buckets_train_landscape_and_square_clips_at_their_own_sizes \
    --deselect tests/test_trainer.py::test_tiny_model_overfits_one_batch \
    --deselect tests/test_trainer.py::test_kill_and_resume_continues_bit_identically \
    --deselect tests/test_trainer.py::test_two_processes_fsdp_and_context_parallel_match_one_process \
    tests/test_sampler.py::test_cli_end_to_end tests/test_sampler.py::test_mp4_written_at_model_fps
