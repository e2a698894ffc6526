"""Initializing an already-sharded model module by module (cosmos_models/training/sharded_init.py):
the weights are cm.build's bit for bit, only one submodule's full weights exist at a time, and a
parameter that no submodule's reset_parameters initializes is an error, not garbage."""
import pytest
import torch
from torch import nn

import cosmos_models as cm
from cosmos_models.training import sharded_init

VARIANTS = ("tiny", "tiny-transfer", "tiny-multiview", "tiny-action")


def _allocate(model: nn.Module, shard=lambda t: t) -> nn.Module:
    """The meta model's parameters as real (uninitialized) tensors of their shard's shape: what
    FSDP2's to_empty leaves on a rank."""
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None:
                module._parameters[name] = nn.Parameter(torch.empty(shard(torch.empty(p.shape, device="meta")).shape))
    return model


def _rank_1_of_4(t):
    chunks = t.chunk(4, 0)
    return chunks[1] if len(chunks) > 1 else t.narrow(0, 0, 0)


@pytest.mark.parametrize("name", VARIANTS)
def test_the_weights_are_cm_builds_bit_for_bit(name):
    torch.manual_seed(7)
    expect = cm.build(name, "cpu", torch.float32).state_dict()
    model = _allocate(cm.build(name, "meta", torch.float32))
    torch.manual_seed(7)
    sharded_init.initialize(model, cm.build(name, "meta", torch.float32), "cpu")
    got = model.state_dict()
    assert list(got) == list(expect)
    for k in expect:
        assert torch.equal(got[k], expect[k]), k


def test_one_submodule_at_a_time_and_each_rank_keeps_its_shard():
    """Simulated rank 1 of 4: each parameter keeps chunk 1 of the full tensor along dim 0 (FSDP2's
    layout); when a piece is copied, only that one submodule of the shadow is materialized."""
    torch.manual_seed(7)
    full = cm.build("tiny", "cpu", torch.float32).state_dict()
    model = _allocate(cm.build("tiny", "meta", torch.float32), _rank_1_of_4)
    shadow = cm.build("tiny", "meta", torch.float32)
    live = []

    def piece(target, tensor):
        live.append(sum(p.numel() for p in shadow.parameters() if not p.is_meta))
        return target, _rank_1_of_4(tensor)

    torch.manual_seed(7)
    sharded_init.initialize(model, shadow, "cpu", piece=piece)
    for k, p in model.state_dict().items():
        assert torch.equal(p, _rank_1_of_4(full[k])), k
    total = sum(t.numel() for t in full.values())
    largest_block = max(sum(p.numel() for p in b.parameters()) for b in shadow.blocks)
    assert 0 < max(live) <= largest_block < total / 2, (max(live), largest_block, total)
    assert all(p.is_meta for p in shadow.parameters()), "materialized submodules must go back to meta"


def test_for_14b_the_largest_submodule_is_a_small_part_of_the_model():
    """What a 14B rank holds at its peak: its shards plus one block's full fp32 weights (the
    largest unit reset_parameters initializes), ~1/36 of the model instead of all of it."""
    model = cm.build("predict2.5-14b", "meta", torch.float32)
    total = sum(p.numel() for p in model.parameters())
    units = [sum(p.numel() for p in m.parameters()) for m in model.children()] + \
            [sum(p.numel() for p in b.parameters()) for b in model.blocks]
    largest = max(u for u in units if u < total * 0.9)  # the blocks list itself is not one unit
    assert total * 4 > 50e9 and largest * 4 < 2e9, (total * 4 / 1e9, largest * 4 / 1e9)


def test_a_parameter_no_submodule_initializes_is_an_error():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)
            self.scale = nn.Parameter(torch.empty(3))

        def reset_parameters(self):
            self.lin.reset_parameters()
            nn.init.ones_(self.scale)  # on the root: not streamed

    with torch.device("meta"):
        model, shadow = Net(), Net()
    model.to_empty(device="cpu")
    with pytest.raises(RuntimeError, match=r"initialized no submodule holding \['scale'\]"):
        sharded_init.initialize(model, shadow, "cpu")


# ------------------------------------------------------------------------------------------ loading
def test_load_copies_each_rank_its_piece_and_is_strict():
    """Simulated rank 1 of 4 loading a full (CPU) state dict: each parameter gets chunk 1 of its
    entry; a missing entry, an entry no parameter reads and a mis-shaped one are errors."""
    torch.manual_seed(3)
    full = cm.build("tiny", "cpu", torch.float32).state_dict()
    model = _allocate(cm.build("tiny", "meta", torch.float32), _rank_1_of_4)
    piece = lambda target, tensor: (target, _rank_1_of_4(tensor))  # noqa: E731
    sharded_init.load(model, {k: v.to(torch.bfloat16) for k, v in full.items()}, piece=piece)
    for k, p in model.state_dict().items():
        assert p.dtype == torch.float32 and torch.equal(p, _rank_1_of_4(full[k].to(torch.bfloat16).float())), k
    first = next(iter(full))
    with pytest.raises(RuntimeError, match=rf"1 parameter\(s\) without an entry \['{first}'\]"):
        sharded_init.load(model, {k: v for k, v in full.items() if k != first}, piece=piece)
    with pytest.raises(RuntimeError, match=r"1 entr\(ies\) no parameter reads \['extra'\]"):
        sharded_init.load(model, {**full, "extra": torch.zeros(1)}, piece=piece)
    with pytest.raises(RuntimeError, match=rf"{first}: entry {first} of shape \(1,\) gives this rank"):
        sharded_init.load(model, {**full, first: torch.zeros(1)}, piece=piece)


def _adapters_on_two_ranks(path):
    """Rank r of 2: the tiny DiT with LoRA built on meta, FSDP2-sharded, allocated, loaded from `path`
    and its adapters initialized: the gathered weights."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from cosmos_models.nets import checkpoint
    from cosmos_models.training import lora

    dist.init_process_group("gloo")
    try:
        model = cm.build("tiny", "meta", torch.float32)
        lora.add_lora(model, 4, 8.0)
        mesh = init_device_mesh("cpu", (2,))
        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        model.to_empty(device="cpu")
        weights = checkpoint.matched_state_dict(checkpoint.meta_network(cm.get_config("tiny")), path)
        sharded_init.load(model, weights, key=lora.base_name, skip=lora.is_adapter_key)
        lora.init_adapters(model, 5)
        return {k: v.full_tensor().numpy() for k, v in model.state_dict().items()}  # by value through the queue
    finally:
        dist.destroy_process_group()


def test_sharded_load_and_adapters_equal_one_process(tmp_path):
    """Two FSDP2 ranks loading a checkpoint shard by shard and initializing LoRA adapters end with
    the weights one process has: the checkpoint's, and the same adapters (layout-independent)."""
    pytest.importorskip("peft")
    from cosmos_models.training import lora
    from tests import helpers

    torch.manual_seed(4)
    base = cm.build("tiny", "cpu", torch.float32)
    path = str(tmp_path / "base.safetensors")
    cm.save_checkpoint(base, path)
    one = cm.build("tiny", "cpu", torch.float32)
    cm.load_checkpoint(one, path)
    lora.add_lora(one, 4, 8.0)
    assert lora.init_adapters(one, 5) > 0
    expect = one.state_dict()
    results = helpers.run_ranks(_adapters_on_two_ranks, path, world=2, timeout=100)
    for rank, got in results.items():
        assert list(got) == list(expect)
        for k in expect:
            assert torch.equal(torch.from_numpy(got[k]), expect[k]), (rank, k)
    b = [v for k, v in expect.items() if ".lora_B." in k]
    a = [v for k, v in expect.items() if ".lora_A." in k]
    assert b and all(not v.any() for v in b) and all(v.std() > 0 for v in a)
