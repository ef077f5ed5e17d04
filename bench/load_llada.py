"""What loading a LLaDA checkpoint costs: time and peak memory of the native `llada` backbone's
strict from_pretrained on random bf16 weights written as hub-layout shards.

The default keeps LLaDA-8B's widths (d_model 4096, 32 heads, mlp 12288, vocab 126464: the
embedding and LM head are 2 x 0.52 B parameters) with 2 of its 32 layers, about 2.9 GB on disk,
which fits a 2-core, 24 GB machine in a couple of minutes; `--full` writes all 32 layers (8.0 B
parameters, 16 GB). Each load runs in a fresh process (peak RSS is a process-wide high-water
mark, read from /proc/self/status), after the files were just written (warm page cache), beside
a bare safetensors read of the same shards as the floor. bf16 weights load memory-mapped
(copy-on-write), so the table splits the time to build the model from the first read of every
weight, which the first forward (or `.to("cuda")`) pays.

    python -m bench.load_llada                # writes bench/results/load_llada.json
    python -m bench.load_llada --full         # LLaDA-8B's real shapes
    python -m bench.load_llada --layers 8 --dtype float32 --keep /tmp/llada-random
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .common import save, table

LLADA_8B = {  # LLaDA-8B-Instruct's config.json (architecture fields)
    "activation_type": "silu", "alibi": False, "architectures": ["LLaDAModelLM"], "attention_dropout": 0.0,
    "attention_layer_norm": False, "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama",
    "d_model": 4096, "embedding_dropout": 0.0, "embedding_size": 126464, "eos_token_id": 126081,
    "include_bias": False, "include_qkv_bias": False, "input_emb_norm": False, "layer_norm_type": "rms",
    "layer_norm_with_affine": True, "mask_token_id": 126336, "max_sequence_length": 4096, "mlp_hidden_size": 12288,
    "model_type": "llada", "n_heads": 32, "n_kv_heads": 32, "n_layers": 32, "pad_token_id": 126081,
    "residual_dropout": 0.0, "rms_norm_eps": 1e-05, "rope": True, "rope_full_precision": True, "rope_theta": 500000.0,
    "scale_logits": False, "vocab_size": 126464, "weight_tying": False,
}  # fmt: skip


def _status_mb(field: str) -> float:
    """VmRSS (resident now) or VmHWM (peak resident) of this process in MB. ru_maxrss would not
    do: Linux carries it over exec from the parent, which held a shard while writing."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_checkpoint(folder: Path, config: dict, shard_bytes: int = 2 << 30) -> float:
    """Random bf16 weights (std 0.02, norms 1) under the checkpoint's names, in shards of about
    `shard_bytes` with model.safetensors.index.json; returns the bytes written."""
    from safetensors.torch import save_file

    from maskgrpo.backbones.llada import LLaDABackbone, LLaDAConfig

    with torch.device("meta"):
        names = {k: v.shape for k, v in LLaDABackbone(LLaDAConfig.from_dict(config), config["mask_token_id"]).state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in names.items():
        nbytes = 2 * shape.numel()
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    g = torch.Generator().manual_seed(0)
    weight_map, total = {}, 0
    for i, part in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name in part:
            shape = names[name]
            norm = name.endswith("norm.weight") or "ln_f" in name
            tensors[name] = torch.ones(shape, dtype=torch.bfloat16) if norm else (torch.randn(shape, generator=g, dtype=torch.bfloat16) * 0.02)
            weight_map[name] = file
            total += 2 * shape.numel()
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        del tensors
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return float(total)


def child(mode: str, folder: str, dtype: str) -> None:
    """One measurement in this process: `native` (backbones.build) or `raw` (safetensors only)."""
    torch.set_num_threads(1)
    import maskgrpo  # noqa: F401  (registers components; imported before the baseline RSS)
    from maskgrpo.registry import backbones

    baseline = _status_mb("VmRSS")
    start = time.perf_counter()
    if mode == "native":
        model = backbones.build({"type": "llada", "path": folder, "dtype": dtype})
        tensors = list(model.parameters())
    else:
        from safetensors import safe_open

        tensors = []
        for file in sorted(Path(folder).glob("*.safetensors")):
            with safe_open(str(file), framework="pt") as f:
                tensors += [f.get_tensor(k) for k in f.keys()]
    loaded = time.perf_counter()
    # bf16 tensors come back memory-mapped (copy-on-write): the pages are read when first used
    # (the first forward, or .to("cuda")). Reading every weight once shows that cost.
    with torch.no_grad():
        checksum = sum(float(t.sum()) for t in tensors)  # no float32 copy of a 2 GB embedding
    touched = time.perf_counter()
    print(json.dumps({
        "mode": mode, "params": sum(t.numel() for t in tensors), "load_s": loaded - start, "first_read_s": touched - loaded,
        "baseline_rss_mb": baseline, "rss_after_mb": _status_mb("VmRSS"), "peak_rss_mb": _status_mb("VmHWM"), "checksum": checksum,
    }))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="all 32 layers of LLaDA-8B (16 GB on disk)")
    parser.add_argument("--layers", type=int, default=2, help="layers to keep at LLaDA-8B's widths (default 2)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="dtype to load into")
    parser.add_argument("--keep", type=Path, help="write the checkpoint here and keep it (default: a temporary folder)")
    args = parser.parse_args()
    config = dict(LLADA_8B, n_layers=32 if args.full else args.layers)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="llada-random-"))
    try:
        start = time.perf_counter()
        nbytes = write_checkpoint(folder, config)
        write_s = time.perf_counter() - start
        shards = len(list(folder.glob("*.safetensors")))
        print(f"wrote {nbytes / 1e9:.2f} GB in {shards} shards to {folder} in {write_s:.0f} s")
        rows = []
        for mode in ("raw", "native"):
            out = subprocess.run([sys.executable, "-m", "bench.load_llada", "--child", mode, str(folder), args.dtype], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r["total_s"] = r["load_s"] + r["first_read_s"]
            r["peak_over_checkpoint"] = (r["peak_rss_mb"] - r["baseline_rss_mb"]) * 2**20 / nbytes
            rows.append(r)
        print(table(rows, ["mode", "params", "load_s", "first_read_s", "total_s", "baseline_rss_mb", "peak_rss_mb", "rss_after_mb", "peak_over_checkpoint"]))
        path = save("load_llada", {"config": {k: config[k] for k in ("d_model", "n_layers", "n_heads", "mlp_hidden_size", "vocab_size")},
                                   "dtype": args.dtype, "checkpoint_bytes": nbytes, "shards": shards, "write_seconds": write_s,
                                   "page_cache": "warm (files just written)", "rows": rows})  # fmt: skip
        print(f"wrote {path}")
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:5])
    else:
        main()
