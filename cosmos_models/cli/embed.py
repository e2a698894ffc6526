"""`cosmos embed`: prompts to text-embedding files with the Reason1 encoder (cosmos_models.nets.text_encoder).

    cosmos embed --prompts prompts.txt --out embeddings/          # one prompt per line: prompt_00000.pt, ...
    cosmos embed --prompts captions.jsonl --out data/videos/       # {"name": "clip_0001", "prompt": "..."} per line
    cosmos sample --prompt-embedding embeddings/prompt_00000.pt ...
    cosmos embed --data datasets/my_robot/      # the official layout: videos/<name>.mp4 + metas/<name>.txt

--prompts: a .txt file (one prompt per line, blank lines skipped; named prompt_00000, prompt_00001, ...),
a .json file (a list of prompts, a list of {"name", "prompt"} objects, or an object name -> prompt) or a
.jsonl file (one {"name"?, "prompt"} object per line). Each embedding is written as <out>/<name>.pt
({"embedding": (512, features)}), the form `cosmos train --data` reads beside <name>.mp4 and
`cosmos sample --prompt-embedding` takes. The disk cache makes a re-run cheap.

--data DATASET: the official post-training layout (DATASET/videos/*.mp4, one caption per clip in
DATASET/metas/<name>.txt or, for clips without one, a row "video,caption" of DATASET/metadata.csv): each caption not embedded yet goes to DATASET/text_embeddings/<name>.pt,
where `cosmos train --data DATASET` finds it (videos without a caption are counted and skipped).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from cosmos_models.nets.text_encoder import ENV_CACHE, ENV_ENCODER, PromptEncoder, cache_dir_flag, write_embedding
from cosmos_models.sampling.specs import FILE_NAME

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    a = parser.add_argument
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompts", help=".txt / .json / .jsonl file of prompts (see below)")
    source.add_argument("--data", metavar="DATASET", help="a dataset in the official layout (see below)")
    a("--out", default=None, help="folder for <name>.pt files (with --prompts)")
    a("--text-encoder", default=None, metavar="FOLDER",
      help=f"transformers folder of Cosmos-Reason1-7B (default: ${ENV_ENCODER}, else the Hugging Face cache)")
    a("--embedding-cache", default=None, metavar="DIR", help=f"default: ${ENV_CACHE} or ~/.cache/cosmos-kernels/"
                                                            "embeddings; 'none': no cache")
    a("--device", default=None, help="default: cuda if available, else cpu")
    a("--dtype", choices=DTYPES, default="bf16", help="dtype of the written files (default bf16: half the disk)")
    a("--overwrite", action="store_true", help="replace existing <name>.pt files (default: keep them)")


def read_prompts(path: str) -> list[tuple[str, str]]:
    """(name, prompt) pairs of a prompts file; ValueError naming the entry for a bad one."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--prompts: no file at {path!r}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    ext = os.path.splitext(path)[1].lower()
    if ext == ".txt":
        lines = [line.strip() for line in text.splitlines()]
        return [(f"prompt_{i:05d}", p) for i, p in enumerate(line for line in lines if line)]
    if ext == ".jsonl":
        entries = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"--prompts {path} line {n}: not JSON ({exc.msg})") from None
    elif ext == ".json":
        try:
            entries = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--prompts {path}: not JSON ({exc.msg} at line {exc.lineno})") from None
        if isinstance(entries, dict):
            entries = [{"name": k, "prompt": v} for k, v in entries.items()]
        if not isinstance(entries, list):
            raise ValueError(f"--prompts {path}: expected a list of prompts or an object name -> prompt")
    else:
        raise ValueError(f"--prompts {path}: expected a .txt, .json or .jsonl file")
    pairs = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"prompt": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str) or not entry["prompt"].strip():
            raise ValueError(f"--prompts {path} entry {i}: expected a prompt text or an object with a non-empty "
                             f"\"prompt\" string, got {json.dumps(entry)[:200]}")
        name = entry.get("name", f"prompt_{i:05d}")
        if not isinstance(name, str) or not FILE_NAME.match(name):
            raise ValueError(f"--prompts {path} entry {i}: \"name\" {name!r} is not a file name (letters, digits, "
                             "'.', '_', '-')")
        pairs.append((name, entry["prompt"]))
    names = [n for n, _ in pairs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"--prompts {path}: names used more than once: {twice[:10]}")
    if not pairs:
        raise ValueError(f"--prompts {path}: no prompts in it")
    return pairs


def run(args) -> int:
    if args.data is not None:
        return _run_data(args)
    if args.out is None:
        raise ValueError("--prompts needs --out DIR (the folder of the <name>.pt files)")
    pairs = read_prompts(args.prompts)
    os.makedirs(args.out, exist_ok=True)
    todo = [(n, p) for n, p in pairs if args.overwrite or not os.path.exists(os.path.join(args.out, n + ".pt"))]
    encoder = PromptEncoder(args.text_encoder, device=args.device, cache_dir=cache_dir_flag(args.embedding_cache))
    for name, prompt in todo:
        (emb,) = encoder(prompt)
        write_embedding(os.path.join(args.out, name + ".pt"), emb, DTYPES[args.dtype])
    encoder.release()
    kept = len(pairs) - len(todo)
    print(f"cosmos embed: wrote {len(todo)} embedding(s) to {args.out} with {encoder.path} ({encoder.hits} from the "
          f"cache, {encoder.misses} computed)" + (f"; kept {kept} existing (--overwrite replaces them)" if kept else ""),
          file=sys.stderr)
    return 0


def _run_data(args) -> int:
    from cosmos_models.data import clips
    from cosmos_models.data.prepare import embed_captions

    if not os.path.isdir(os.path.join(args.data, clips.OFFICIAL_VIDEOS)) or not (
            os.path.isdir(os.path.join(args.data, clips.OFFICIAL_CAPTIONS))
            or os.path.isfile(os.path.join(args.data, clips.METADATA_CSV))):
        raise FileNotFoundError(f"--data {args.data}: expected the official layout, {clips.OFFICIAL_VIDEOS}/*.mp4 and "
                                f"{clips.OFFICIAL_CAPTIONS}/<name>.txt or {clips.METADATA_CSV} inside it")
    counts = embed_captions(args.data, text_encoder=args.text_encoder, device=args.device,
                            cache_dir=cache_dir_flag(args.embedding_cache), dtype=DTYPES[args.dtype],
                            overwrite=args.overwrite)
    print(f"cosmos embed: {counts['written']} caption(s) embedded into "
          f"{os.path.join(args.data, clips.EMBEDDINGS_DIR)}" + (f" with {counts['encoder']}" if counts["encoder"] else "")
          + f"; {counts['present']} already there; {counts['no_caption']} video(s) without a caption", file=sys.stderr)
    return 0
