"""Inference presets (cosmos_models/sampling/presets.py) and their σ grids, against numbers written
from the official formulas; recognition of released files; the grids shared with training."""
import math

import pytest
import torch

import cosmos_models as cm
from cosmos_models.sampling import presets as P
from cosmos_models.sampling import solvers
from cosmos_models.sampling.sampler import Sampler
from cosmos_models.training import objective


def _karras_by_hand(n):
    """The official use_kerras_sigma branch of FlowUniPCMultistepScheduler.set_timesteps, in plain floats."""
    lo, hi = 0.01 ** (1 / 7), 200 ** (1 / 7)
    edm = [(hi + i / n * (lo - hi)) ** 7 for i in range(n + 1)]
    return [s / (1 + s) for s in edm] + [0.0]


def test_karras_grid_is_the_official_formula():
    grid = solvers.karras_sigmas(35)
    assert grid.dtype == torch.float64 and len(grid) == 37  # N + 1 points and the final 0: N + 1 steps
    assert grid.tolist() == pytest.approx(_karras_by_hand(35), rel=1e-14, abs=0)
    assert grid[0].item() == pytest.approx(200 / 201) and grid[-2].item() == pytest.approx(0.01 / 1.01)
    assert bool((grid[1:] < grid[:-1]).all())
    assert torch.equal(solvers.sigma_grid("karras", 35, shift=3.0), grid)  # no shift on the Karras grid
    with pytest.raises(ValueError, match="unknown sigma grid"):
        solvers.sigma_grid("cosine", 10)


def test_shifted_grid_numbers():
    grid = solvers.sigma_grid("shifted", 4, 5.0)
    base = [0.999 - k * 0.999 / 4 for k in range(4)]
    assert grid.tolist() == pytest.approx([5 * b / (1 + 4 * b) for b in base] + [0.0], rel=1e-14)


def test_training_uses_the_same_grid_code():
    sampler = objective.TimestepSampler.official()
    assert torch.equal(sampler.grid(), solvers.training_grid(1000, 5.0))
    assert sampler.grid()[0].item() == 1.0 and sampler.grid()[-1].item() == pytest.approx(5e-3 / (1 + 4e-3))
    assert objective.shift_timesteps(0.3, 5.0) == solvers.shift_sigma(0.3, 5.0)


@pytest.mark.parametrize("name, grid, guidance, steps, cond, seed", [
    ("predict2.5-2b/pre-trained", "shifted", 7.0, 35, None, 1),
    ("predict2.5-2b/post-trained", "karras", 7.0, 35, 1e-4, 1),
    ("predict2.5-14b/pre-trained", "shifted", 7.0, 35, None, 1),
    ("predict2.5-14b/post-trained", "shifted", 7.0, 35, None, 1),
    ("transfer2.5-2b/edge", "shifted", 3.0, 35, None, 2025),
    ("transfer2.5-2b/depth", "shifted", 3.0, 35, None, 2025),
    ("predict2.5-2b-multiview/auto", "shifted", 3.0, 35, None, 0),
    ("predict2.5-2b/distilled", "shifted", 0.0, 4, None, 1),
])
def test_each_released_checkpoint_has_the_official_settings(name, grid, guidance, steps, cond, seed):
    preset = P.get_preset(name)
    assert (preset.grid, preset.guidance, preset.steps, preset.condition_sigma, preset.seed) == \
        (grid, guidance, steps, cond, seed)
    assert preset.checkpoint.startswith("nvidia/Cosmos-") and preset.uuids
    assert preset.config in cm.configs()


def test_the_post_trained_conditioning_timestep_is_the_official_0_1_in_scheduler_units():
    # official: conditional_frame_timestep = 0.1 in the 0..1000 units of the scheduler's timesteps,
    # which the network multiplies by timestep_scale 0.001: sigma 1e-4
    assert P.get_preset("predict2.5-2b/post-trained").condition_sigma == pytest.approx(0.1 / 1000)


def test_every_preset_is_complete_and_transfer_presets_name_their_modality():
    for preset in P.PRESETS.values():
        assert preset.steps >= 1 and preset.guidance >= 0 and preset.grid in solvers.GRIDS
        if preset.config.startswith("transfer"):
            assert preset.control in cm.get_config(preset.config).control_modalities
        if not preset.distilled and preset.guidance > 0:
            assert preset.negative_prompt == P.DEFAULT_NEGATIVE_PROMPT
        assert preset.describe().startswith(preset.name)
    assert P.DEFAULT_NEGATIVE_PROMPT.startswith("The video captures a series of frames showing ugly scenes")


def test_released_files_are_recognized_by_their_uuid():
    post, why = P.preset_for_file("/ckpts/base/post-trained/81edfebe-bd6a-4039-8c1d-737df1a790bf_ema_bf16.pt",
                                  "predict2.5-2b")
    assert post.name == "predict2.5-2b/post-trained" and "UUID" in why
    assert P.preset_for_file("x/ba2f44f2-c726-4fe7-949f-597069d9b91c/model_ema_bf16.pt", "transfer2.5-2b")[0].control == "blur"
    other, why = P.preset_for_file("/ckpts/my_finetune.pt", "predict2.5-2b")
    assert other.name == "predict2.5-2b/pre-trained" and "default" in why
    tiny, _ = P.preset_for_file(None, "tiny")
    assert tiny.steps == cm.get_config("tiny").sample_steps and tiny.condition_sigma == 1e-4
    with pytest.raises(ValueError, match="unknown preset"):
        P.get_preset("predict9")


def test_our_safetensors_metadata_names_a_preset(tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(1)}, str(path), metadata={"preset": "predict2.5-2b/post-trained"})
    assert P.preset_for_file(path, "tiny")[0].name == "predict2.5-2b/post-trained"


def test_the_sampler_runs_n_plus_one_steps_on_the_karras_grid():
    model = cm.build("tiny")
    calls = []
    model.register_forward_hook(lambda m, args, out: calls.append(float(args[1].flatten()[-1])))
    sampler = Sampler(model, None)
    emb = torch.randn(8, 48)
    sampler.generate("text2world", prompt_embedding=emb, num_steps=5, guidance_scale=0.0, grid="karras",
                     output="latent", progress=False, height=32, width=32, num_frames=5)
    expect = solvers.official_timesteps(solvers.karras_sigmas(5)).double() / 1000 / model.config.timestep_scale
    assert len(calls) == 6 and calls == pytest.approx(expect.tolist())
    assert math.isclose(calls[0], math.trunc(1000 * 200 / 201))
