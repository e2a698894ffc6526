"""Shared by the test modules: which backends can run here, and dtype lists."""
import torch

from cosmos_kernels import dispatch

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def runnable_backends(op: str, device: str = "cpu") -> list[str]:
    """Backends of `op` that can run on `device` in this process (the reference always can)."""
    info = dispatch.registered_ops()[op]
    dev = torch.device(device)
    return [b for b in info.backends if not dispatch.unavailable_reason(b, dev)]


def free_port() -> int:
    """A free TCP port on the loopback interface (for a gloo rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(fn, args, rank, world, port, queue, hang_after):
    import faulthandler
    import os
    import traceback

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    faulthandler.dump_traceback_later(hang_after, exit=True)  # a hung rank shows where it hangs
    try:
        queue.put((rank, "ok", fn(*args)))
    except BaseException:  # noqa: BLE001 - reported by the parent
        queue.put((rank, "error", traceback.format_exc()))


def run_ranks(fn, *args, world: int = 2, timeout: float = 150) -> dict:
    """Run fn(*args) on `world` fresh processes with the env:// rendezvous variables set (RANK,
    WORLD_SIZE, MASTER_ADDR/PORT on 127.0.0.1); {rank: fn's result}. fn must be a module-level
    function (the ranks are spawned, not forked: a fork of a process that has run autograd is
    refused by CUDA builds of torch, and a spawned rank inherits no state of the test process).
    A rank that raises fails the caller with its traceback; a rank that hangs dumps its stack and
    exits before `timeout`."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank_main, args=(fn, args, r, world, port, queue, timeout - 10), daemon=True)
             for r in range(world)]
    for p in procs:
        p.start()
    results = {}
    try:
        for _ in procs:
            rank, status, value = queue.get(timeout=timeout)
            results[rank] = (status, value)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    errors = {r: v for r, (s, v) in results.items() if s != "ok"}
    assert not errors, "\n".join(f"--- rank {r} ---\n{v}" for r, v in errors.items())
    return {r: v for r, (_, v) in results.items()}


def assert_curves_close(a, b, rtol=1e-4):
    """Two [(step, loss)] curves: same steps, finite losses within rtol."""
    import math

    assert [s for s, _ in a] == [s for s, _ in b]
    for (step, x), (_, y) in zip(a, b):
        assert math.isfinite(x) and abs(x - y) <= rtol * abs(y), (step, x, y, a, b)


TINY_ENCODER_WORDS = ("a robot arm picks up the red cube blue car drives on road over camera moves you are helpful assistant who "
         "will provide prompts to an image generator . , video captures series of frames showing ugly scenes").split()
TINY_ENCODER_LAYERS, TINY_ENCODER_HIDDEN = 2, 24  # 2 x 24 = 48 features: the tiny DiT's text_channels


def make_tiny_text_encoder(folder, seed=0):
    """A tiny random Qwen2.5-VL (nothing downloaded): A transformers-format Qwen2.5-VL folder with a chat template, as Cosmos-Reason1-7B is laid out."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]"]
    vocab = {t: i for i, t in enumerate(special + ["system", "user"] + sorted(set(TINY_ENCODER_WORDS) - {"system", "user"}))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="<|endoftext|>",
                                                eos_token="<|im_end|>", additional_special_tokens=special[1:3])
    fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                          "{% endfor %}")
    fast.save_pretrained(folder)
    cfg = transformers.Qwen2_5_VLConfig(
        text_config=dict(vocab_size=64, hidden_size=TINY_ENCODER_HIDDEN, intermediate_size=48, num_hidden_layers=TINY_ENCODER_LAYERS,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 2, 2]}, bos_token_id=0, eos_token_id=2),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=TINY_ENCODER_HIDDEN,
                           fullatt_block_indexes=[0]), bos_token_id=0, eos_token_id=2)
    torch.manual_seed(seed)
    transformers.Qwen2_5_VLForConditionalGeneration(cfg).save_pretrained(folder)
    return str(folder)
