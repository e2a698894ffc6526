"""Ahead-of-time compile of every kernel for Hopper (sm_90a), no GPU needed; resource report.

Each module in cosmos_kernels/triton/ lists the configurations it really launches on an H100 in
`AOT_SPECS` (a list of AotSpec). This compiles each with `triton.compile(ASTSource(...),
target=GPUTarget("cuda", 90, 32))`, runs ptxas -v over its PTX for registers and spills, reads
shared memory from Triton's metadata, and looks for wgmma and TMA copies (cp.async.bulk.tensor)
in the PTX and for warp-specialized partitions (ttg.warp_specialize) in the TTGIR. The CUDA sources of csrc/
are compiled with `nvcc -Xptxas -v` for sm_90a and reported the same way.

Exit status is non-zero if any kernel spills, exceeds the shared-memory limit, fails to compile,
or does not use wgmma, TMA or warp specialization where its spec says it must.

    python -m cosmos_kernels.aot [--json FILE] [--only SUBSTRING] [--no-cuda]
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cosmos_kernels.triton import AotSpec  # noqa: F401 - re-exported: the spec type the report reads

# Hopper: 228 KiB shared memory per SM, of which 227 KiB usable by one block.
SMEM_LIMIT = 227 * 1024
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Row:
    kernel: str
    config: str
    registers: int | None = None
    smem: int | None = None
    spill_bytes: int | None = None
    wgmma: bool | None = None
    tma: bool | None = None
    warp_specialized: bool | None = None
    problems: list = field(default_factory=list)


_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_SMEM = re.compile(r"(\d+) bytes smem")
_PTXAS_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def _ptxas() -> str:
    # the same ptxas Triton itself uses for sm_90 (its PTX version must match)
    from triton.backends.nvidia.compiler import get_ptxas

    return get_ptxas(90).path


def _parse_ptxas(text: str) -> tuple[int | None, int | None, int]:
    regs = [int(m) for m in _PTXAS_REGS.findall(text)]
    smem = [int(m) for m in _PTXAS_SMEM.findall(text)]
    spills = sum(int(a) + int(b) for a, b in _PTXAS_SPILL.findall(text))
    return (max(regs) if regs else None), (max(smem) if smem else None), spills


def triton_specs(only: str = "") -> list[AotSpec]:
    import cosmos_kernels.triton as pkg

    specs = []
    for mod in sorted(m.name for m in pkgutil.iter_modules(pkg.__path__)):
        module = importlib.import_module(f"cosmos_kernels.triton.{mod}")
        specs.extend(s for s in getattr(module, "AOT_SPECS", []) if only in s.name)
    return specs


def compile_triton(spec: AotSpec, workdir: Path) -> Row:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    cfg = f"warps={spec.num_warps} stages={spec.num_stages} " + " ".join(
        f"{k}={v}" for k, v in spec.constexprs.items())
    row = Row(spec.name, cfg)
    try:
        attrs = {(spec.fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in spec.aligned}
        src = ASTSource(fn=spec.fn, signature=spec.signature, constexprs=spec.constexprs, attrs=attrs)
        compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                                  options={"num_warps": spec.num_warps, "num_stages": spec.num_stages})
    except Exception as exc:  # noqa: BLE001 - report any compiler failure as a row
        row.problems.append(f"compile failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        return row
    ptx = compiled.asm["ptx"]
    row.smem = int(compiled.metadata.shared)
    row.wgmma = "wgmma" in ptx
    row.tma = "cp.async.bulk.tensor" in ptx
    row.warp_specialized = "ttg.warp_specialize" in compiled.asm.get("ttgir", "")
    ptx_file = workdir / f"{re.sub(r'[^A-Za-z0-9_]', '_', spec.name)}.ptx"
    ptx_file.write_text(ptx)
    arch = "sm_90a" if ".target sm_90a" in ptx else "sm_90"
    res = subprocess.run([_ptxas(), "-v", f"--gpu-name={arch}", str(ptx_file), "-o", os.devnull],
                         capture_output=True, text=True)
    if res.returncode != 0:
        row.problems.append(f"ptxas failed: {res.stderr.strip()[:200]}")
        return row
    row.registers, _, row.spill_bytes = _parse_ptxas(res.stderr + res.stdout)
    _judge(row, spec.expect_wgmma, spec.expect_tma, spec.expect_warp_specialized)
    return row


def _judge(row: Row, expect_wgmma: bool, expect_tma: bool = False, expect_ws: bool = False) -> None:
    if row.spill_bytes:
        row.problems.append(f"spills {row.spill_bytes} bytes")
    if row.smem is not None and row.smem > SMEM_LIMIT:
        row.problems.append(f"shared memory {row.smem} > {SMEM_LIMIT}")
    if expect_wgmma and not row.wgmma:
        row.problems.append("expected wgmma, none in the PTX")
    if expect_tma and not row.tma:
        row.problems.append("expected TMA copies (cp.async.bulk.tensor), none in the PTX")
    if expect_ws and not row.warp_specialized:
        row.problems.append("expected a warp-specialized loop, none in the TTGIR")


def compile_cuda(workdir: Path) -> list[Row]:
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)
    sources = sorted((ROOT / "csrc").glob("*.cu"))
    if nvcc is None:
        return [Row(s.name, "sm_90a", problems=["nvcc not found"]) for s in sources]
    rows = []
    for src in sources:
        cmd = [nvcc, "-c", "-O3", "-std=c++17", "--use_fast_math", "-Xptxas", "-v",
               "-gencode=arch=compute_90a,code=sm_90a", f"-I{ROOT / 'csrc'}", str(src),
               "-o", str(workdir / (src.stem + ".o"))]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            rows.append(Row(src.name, "sm_90a", problems=[f"nvcc failed: {res.stderr.strip()[-300:]}"]))
            continue
        rows.extend(_cuda_rows(src.name, res.stderr))
    return rows


def _demangle(names: list[str]) -> list[str]:
    if not names or not shutil.which("c++filt"):
        return names
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout
    return out.splitlines() or names


def _cuda_rows(src: str, log: str) -> list[Row]:
    # ptxas prints, per entry: "Compiling entry function 'NAME' for 'sm_90a'" then resource lines.
    chunks = re.split(r"Compiling entry function '([^']+)' for '[^']+'", log)
    mangled = chunks[1::2]
    names = _demangle(mangled)
    rows = []
    for name, body in zip(names, chunks[2::2]):
        regs, smem, spills = _parse_ptxas(body)
        short = re.sub(r"\(.*$", "", name)
        tmpl = re.search(r"<(.*)>", name)
        row = Row(f"{src}:{short.split('<')[0].split('::')[-1]}", tmpl.group(1)[:60] if tmpl else "sm_90a",
                  registers=regs, smem=smem or 0, spill_bytes=spills, wgmma=False, tma=False, warp_specialized=False)
        _judge(row, False)
        rows.append(row)
    return rows


def format_table(rows: list[Row]) -> str:
    head = ("kernel", "config", "regs", "smem", "spill", "wgmma", "tma", "ws", "status")
    yes = {None: "-", True: "yes", False: "no"}
    data = [(r.kernel, r.config, str(r.registers), str(r.smem), str(r.spill_bytes), yes[r.wgmma], yes[r.tma],
             yes[r.warp_specialized], "; ".join(r.problems) or "ok") for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *data)] if data else [len(h) for h in head]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), sep, *map(line, data)])


def run(only: str = "", cuda: bool = True) -> list[Row]:
    os.environ.pop("TRITON_INTERPRET", None)  # the interpreter cannot compile for a target
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    with tempfile.TemporaryDirectory(prefix="cosmos_aot_") as tmp:
        work = Path(tmp)
        cuda_rows = None
        if cuda:  # nvcc runs in its own processes: let it work while Triton compiles here
            from concurrent.futures import ThreadPoolExecutor
            pool = ThreadPoolExecutor(max_workers=1)
            cuda_rows = pool.submit(compile_cuda, work)
        rows = [compile_triton(s, work) for s in triton_specs(only)]
        if cuda_rows is not None:
            rows += [r for r in cuda_rows.result() if only in r.kernel]
            pool.shutdown()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cosmos_kernels.aot", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="also write the rows as JSON to this file")
    ap.add_argument("--only", default="", help="only kernels whose name contains this")
    ap.add_argument("--no-cuda", action="store_true", help="skip the nvcc report of csrc/")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        # triton.jit decided at import time; a child process without the interpreter is needed
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        return subprocess.call([sys.executable, "-m", "cosmos_kernels.aot", *(argv if argv is not None else sys.argv[1:])], env=env)
    rows = run(args.only, cuda=not args.no_cuda)
    print("sm_90a compile report (Triton target GPUTarget('cuda', 90, 32); nvcc -gencode arch=compute_90a,code=sm_90a)")
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in rows], indent=1))
    bad = [r for r in rows if r.problems]
    if not rows:
        print("no kernels found", file=sys.stderr)
        return 1
    if bad:
        print(f"{len(bad)} kernel(s) failed the report", file=sys.stderr)
        return 1
    print(f"{len(rows)} kernels: no spills, shared memory within {SMEM_LIMIT} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
