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



def record_written_videos(monkeypatch) -> dict:
    """{path: the float video tensor the sampler wrote there}: `cosmos sample` still writes its
    mp4s, and a test compares what was generated bit for bit (an H.264 encode through PyAV 18 is
    not byte-reproducible run to run even with one encoder thread, so decoded mp4 frames can
    differ for identical videos)."""
    from cosmos_models.sampling import sampler

    written, real = {}, sampler.write_video

    def write_video(path, video, fps, **kw):
        written[str(path)] = video.detach().cpu().clone()
        return real(path, video, fps, **kw)

    monkeypatch.setattr(sampler, "write_video", write_video)
    return written
