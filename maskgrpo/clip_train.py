"""Training the shapes world's small CLIP (open_clip), so that `clip_score` means something offline.

The model is an ordinary open_clip `CLIP`: a timm vision tower (`vision_cfg.timm_model_name`,
random init, no download) and a small causal text transformer over a word-level tokenizer of the
shapes world's 29 words (a `tokenizers` WordLevel model saved as a transformers tokenizer; open_clip
loads it as an `HFTokenizer`, the text is pooled at its `<eos>` token). It is saved as an open_clip
`local-dir:` folder (`open_clip_config.json`, `tokenizer.json`, `open_clip_model.safetensors`), so
the `clip_score` metric and reward load it unchanged:

    rewards:
      - {type: clip_score, model: local-dir:checkpoints/shapes-clip, weight: 1.0}

(a relative folder is relative to the working directory, like every checkpoint path in the
shipped recipes). Training builds the model, its image transform and its tokenizer through the
same open_clip loader the metric uses, so training and scoring preprocess images identically.

Objective: CLIP's symmetric InfoNCE with a learnable logit scale, on fresh renders of random
prompts of all six GenEval tags. For each scene one *wrong variant* (`wrong_metadata`: wrong
count, colour, side or class) joins the batch as its own image-caption pair, so every true caption
has a hard negative image and every true image a hard negative caption. By default the variant is
a minimal pair (`minimal_wrong`: the same scene recoloured, with one object's class changed or one
object removed, or mirrored for a reversed relation); `make_wrong`'s fresh scenes are an option.
Identical captions share one text column (several images can be its positives). The scenes,
captions and hard negatives are the world's (`maskgrpo.worlds.shapes.clip_data`); this module is
the program (model config, build/save/load, loss, evaluation, training loop).

Evaluation on held-out scenes (a separate seed; wrong scenes made by `make_wrong`, i.e. new
layouts): for every applicable wrong kind, how often the true caption scores above the wrong
caption on the true image (`text_acc`), how often the true image scores above the wrong image for
the true caption (`image_acc`, what a GRPO group compares), and the mean score gaps in
`clip_score` units (100 x max(cos, 0)). Chance accuracy is 0.5. Measured (recipes/shapes-clip.yaml
model, 1,500 steps): count, colour and class near 1.0 with gaps of 30-50 points, also on VQ
reconstructions; `side` (left/right/above/below) stays at chance, as for large CLIPs.

`maskgrpo train-clip recipes/shapes-clip.yaml` (recipe schema: `ClipRecipe`, `kind: clip`) writes the
run directory every program writes (`runtime.RunDirectory`: `recipe.yaml`, `metrics.jsonl`,
TensorBoard events, `checkpoint/`, `model/`); `--resume` continues exactly, since each step's batch
is a function of (seed, step). It runs on one process: the loss contrasts each image with every
caption of the whole batch, so a launch with more processes is refused rather than sharded.
"""

from __future__ import annotations

import json
import logging
import math
import random
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
import yaml
from pydantic import Field, field_validator, model_validator
from tqdm.auto import tqdm

from .errors import MaskGRPOError, RecipeError
from .geneval_vocab import GenEvalTag
from .recipe import MAX_IMAGE_SIDE, MAX_LAYERS, MAX_ROWS, MAX_STEPS, MAX_TOKENS, MAX_WIDTH, _Strict, read_schema
from .runtime import RunDirectory, StopSignal, lr_lambda, make_accelerator, stop_interrupted
from .utils import atomic_directory, atomic_write_text
from .worlds.shapes.clip_data import eval_set, training_batch
from .worlds.shapes.vocabulary import WORDS, WrongKind

SPECIAL_TOKENS = ("<pad>", "<unk>", "<eos>")  # ids 0, 1, 2
WEIGHTS_FILE = "open_clip_model.safetensors"
CONFIG_FILE = "open_clip_config.json"
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps the temperature at 1/100


class ClipModelConfig(_Strict):
    embed_dim: int = Field(64, ge=8, le=MAX_WIDTH, description="joint embedding size")
    timm_model_name: str = Field("test_resnet", description="timm vision trunk (random init); must accept image_size inputs")
    timm_pool: Literal["avg", "abs_attn", "rot_attn", ""] = "avg"
    timm_proj: Literal["linear", "mlp", "none"] = "linear"
    image_size: int = Field(32, ge=8, le=MAX_IMAGE_SIDE, description="network input size; the transform resizes images to it (none for renders of this size)")
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    context_length: int = Field(16, ge=12, le=MAX_TOKENS, description="tokens per caption incl. <eos>; shapes prompts have at most 10 words")
    text_width: int = Field(64, ge=8, le=MAX_WIDTH)
    text_heads: int = Field(4, ge=1, le=MAX_WIDTH)
    text_layers: int = Field(3, ge=1, le=MAX_LAYERS)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ClipModelConfig:
        if self.text_width % self.text_heads:
            raise ValueError(f"text_width ({self.text_width}) must be a multiple of text_heads ({self.text_heads})")
        return self


class ClipTrainConfig(_Strict):
    steps: int = Field(2200, ge=1, le=MAX_STEPS)
    batch_size: int = Field(48, ge=2, le=MAX_ROWS, description="true scenes per step (each brings one wrong variant)")
    hard_negatives: Literal["minimal", "make_wrong", "none"] = Field(
        "minimal", description="one wrong-variant image-caption pair per scene: the same scene with one thing changed, a new scene (make_wrong), or none"
    )
    tag_weights: dict[GenEvalTag, float] = Field(
        {}, description="relative frequency of each GenEval tag among training scenes (default 1 each)"
    )
    wrong_kind_weights: dict[WrongKind, float] = Field(
        {"count": 1.0, "color": 1.0, "side": 1.0, "class": 1.0},
        description="how often each applicable wrong kind is drawn for a scene's hard negative (relative weights)",
    )
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_steps: int = Field(50, ge=0, le=MAX_STEPS)
    max_grad_norm: float | None = Field(1.0, gt=0)
    init_logit_scale: float = Field(math.log(1 / 0.07), le=MAX_LOGIT_SCALE, description="log of the initial inverse temperature")
    eval_every: int = Field(250, ge=0, le=MAX_STEPS, description="0: evaluate only at the end")
    eval_scenes: int = Field(150, ge=1, le=MAX_ROWS, description="held-out scenes, each with every applicable wrong kind")
    schedule: Literal["cosine", "constant"] = Field("cosine", description="learning rate after the warm-up")
    save_every: int = Field(0, ge=0, le=MAX_STEPS, description="checkpoint every N steps (0: only at the end or when stopped)")
    device: str = "cpu"
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    report_to: list[Literal["tensorboard", "wandb"]] = ["tensorboard"]

    _yaml_no = field_validator("mixed_precision", mode="before")(lambda cls, v: "no" if v is False else v)


class ClipRecipe(_Strict):
    kind: Literal["clip"]
    name: str
    seed: int = 0
    output_dir: str
    image_size: int = Field(32, ge=8, le=MAX_IMAGE_SIDE, description="size of the shapes renders trained and evaluated on")
    model: ClipModelConfig = ClipModelConfig()
    train: ClipTrainConfig = ClipTrainConfig()
    save_to: str | None = Field(None, description="also save the trained model folder here")


def load_clip_recipe(path: str | Path, overrides: list[str] | None = None) -> ClipRecipe:
    recipe = read_schema(path, ClipRecipe, overrides)
    check_timm_model(recipe.model, where=f"{path}: model.timm_model_name")
    return recipe


def check_timm_model(cfg: ClipModelConfig, where: str = "model.timm_model_name") -> None:
    import timm

    if not timm.is_model(cfg.timm_model_name):
        import difflib

        close = difflib.get_close_matches(cfg.timm_model_name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise RecipeError(f"{where}: unknown timm model '{cfg.timm_model_name}'{hint}")


# -- the model folder -------------------------------------------------------------------------------
def open_clip_config(cfg: ClipModelConfig) -> dict[str, Any]:
    """The `open_clip_config.json` of a model (open_clip's hf-hub / local-dir format)."""
    return {
        "model_cfg": {
            "embed_dim": cfg.embed_dim,
            "vision_cfg": {
                "timm_model_name": cfg.timm_model_name,
                "timm_model_pretrained": False,
                "timm_pool": cfg.timm_pool,
                "timm_proj": cfg.timm_proj,
                "image_size": cfg.image_size,
            },
            "text_cfg": {
                "context_length": cfg.context_length,
                "vocab_size": len(SPECIAL_TOKENS) + len(WORDS),
                # any non-empty name: from a local-dir: folder open_clip loads the folder's tokenizer
                "hf_tokenizer_name": "maskgrpo-shapes-words",
                "width": cfg.text_width,
                "heads": cfg.text_heads,
                "layers": cfg.text_layers,
                "pool_type": "eos",
                "eos_id": SPECIAL_TOKENS.index("<eos>"),
                "pad_id": SPECIAL_TOKENS.index("<pad>"),
            },
        },
        "preprocess_cfg": {
            "size": cfg.image_size,
            "mean": list(cfg.mean),
            "std": list(cfg.std),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
    }


def save_word_tokenizer(folder: Path, context_length: int) -> None:
    """A transformers fast tokenizer over the shapes words: lower-cased, split on whitespace and
    punctuation, `<eos>` appended (kept when truncating), unknown words -> `<unk>`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in WORDS:
        vocab[word] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A <eos>", special_tokens=[("<eos>", vocab["<eos>"])])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>", model_max_length=context_length
    )
    fast.save_pretrained(str(folder))


def write_model_files(folder: Path, cfg: ClipModelConfig) -> None:
    """Everything of a model folder but the weights."""
    folder.mkdir(parents=True, exist_ok=True)
    save_word_tokenizer(folder, cfg.context_length)
    atomic_write_text(folder / CONFIG_FILE, json.dumps(open_clip_config(cfg), indent=2) + "\n")


@contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """open_clip logs 'no CLIP weights found' on the root logger when it builds a fresh model."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def build_clip(cfg: ClipModelConfig, device: str | torch.device = "cpu") -> tuple[Any, Any, Any]:
    """(randomly initialised open_clip model, eval image transform, tokenizer), built from a
    local-dir: folder by open_clip's own loader: the objects the `clip_score` metric gets."""
    import open_clip

    check_timm_model(cfg)
    with tempfile.TemporaryDirectory(prefix="maskgrpo-clip-") as tmp:
        write_model_files(Path(tmp), cfg)
        name = f"local-dir:{tmp}"
        with _quiet_open_clip():
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, device=device, pretrained_image=False, pretrained_text=False
            )
            tokenizer = open_clip.get_tokenizer(name)
    return model, preprocess, tokenizer


def save_clip(model: Any, cfg: ClipModelConfig, folder: str | Path) -> Path:
    """Write an open_clip local-dir: folder; atomically (a temp folder renamed into place)."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_directory(folder) as tmp:
        write_model_files(tmp, cfg)
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / WEIGHTS_FILE).chmod(0o644)  # safetensors writes through a private temp file
    return Path(folder)


# -- loss and evaluation ----------------------------------------------------------------------------
def clip_loss(model: Any, pixels: torch.Tensor, tokens: torch.Tensor, caption_index: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE. `tokens` holds the unique captions, `caption_index[i]` the caption of
    image i. Image -> text: one positive column per image. Text -> image: a caption's positives
    are all the images it describes (uniform target over them)."""
    img = F.normalize(model.encode_image(pixels), dim=-1)
    txt = F.normalize(model.encode_text(tokens), dim=-1)
    logits = model.logit_scale.exp() * img @ txt.T  # [images, captions]
    image_to_text = F.cross_entropy(logits, caption_index)
    positives = F.one_hot(caption_index, txt.shape[0]).T.float()  # [captions, images]
    target = positives / positives.sum(1, keepdim=True)
    text_to_image = -(target * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    return (image_to_text + text_to_image) / 2


@torch.no_grad()
def evaluate_clip(model: Any, preprocess: Any, tokenizer: Any, items: list[dict[str, Any]], device: str | torch.device = "cpu") -> dict[str, float]:
    """Pairwise accuracies and score gaps (clip_score units) per wrong kind, and overall."""
    from .metrics.clip_score import encode_images, encode_texts

    was_training = model.training
    model.eval()
    images = [it["image"] for it in items]
    captions = [it["caption"] for it in items]
    keys = [(i, kind) for i, it in enumerate(items) for kind in it["wrong"]]
    wrong_images = [items[i]["wrong"][k][1] for i, k in keys]
    wrong_captions = [items[i]["wrong"][k][0] for i, k in keys]
    img = encode_images(model, preprocess, images + wrong_images, str(device), batch_size=256)
    txt = encode_texts(model, tokenizer, captions + wrong_captions, str(device))
    n = len(items)
    score = lambda a, b: 100.0 * (a * b).sum(-1).clamp(min=0)  # ClipScore's formula
    idx = torch.tensor([i for i, _ in keys], dtype=torch.long)
    true = score(img[idx], txt[idx])  # true image, true caption
    wrong_text = score(img[idx], txt[n:])  # true image, wrong caption
    wrong_image = score(img[n:], txt[idx])  # wrong image, true caption
    out: dict[str, float] = {"eval/clip_score_true": float(score(img[:n], txt[:n]).mean())}
    kinds = sorted({k for _, k in keys})
    for name, sel in [("all", None)] + [(k, torch.tensor([kk == k for _, kk in keys])) for k in kinds]:
        t, wt, wi = (true, wrong_text, wrong_image) if sel is None else (true[sel], wrong_text[sel], wrong_image[sel])
        out[f"eval/text_acc/{name}"] = float((t > wt).float().mean())
        out[f"eval/image_acc/{name}"] = float((t > wi).float().mean())
        out[f"eval/text_gap/{name}"] = float((t - wt).mean())
        out[f"eval/image_gap/{name}"] = float((t - wi).mean())
    if was_training:
        model.train()
    return out


# -- training ---------------------------------------------------------------------------------------
def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only (not on gains, biases, embeddings' scale or the logit scale)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def step_batch(recipe: ClipRecipe, step: int) -> tuple[list[Any], list[str]]:
    """The images and captions of batch `step`, drawn from a stream of their own named by
    (seed, step): the same after `--resume` as in an uninterrupted run. (A string seed: it
    cannot coincide with the held-out set's integer seed.)"""
    cfg = recipe.train
    rng = random.Random(f"clip-train:{recipe.seed}:{step}")
    return training_batch(rng, cfg.batch_size, recipe.image_size, cfg.hard_negatives, cfg.wrong_kind_weights, cfg.tag_weights)


def train_clip(recipe: ClipRecipe, resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    torch.manual_seed(recipe.seed)
    cfg, mcfg = recipe.train, recipe.model
    out = Path(recipe.output_dir)
    acc = make_accelerator(cfg.device, cfg.mixed_precision, cfg.report_to, out)
    if acc.num_processes > 1:
        # each image is contrasted with every caption of the global batch: sharding the batch
        # would train each process on a different, smaller objective than one process does
        raise MaskGRPOError(
            f"train-clip: the contrastive loss over the whole batch runs on one process; "
            f"this launch has {acc.num_processes}, start it without accelerate launch/torchrun"
        )
    run_dir = RunDirectory(out, acc)
    run_dir.prepare(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False), resume, overwrite)
    model, preprocess, tokenizer = build_clip(mcfg, acc.device)
    with torch.no_grad():
        model.logit_scale.fill_(cfg.init_logit_scale)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.warmup_steps, cfg.steps, cfg.schedule))
    model, opt = acc.prepare(model, optimizer)
    step, rows = 0, []
    if resume:
        _, step, rows = run_dir.resume({"model": model}, opt, sched)
    if cfg.report_to:
        acc.init_trackers("tb")
    held_out = eval_set(cfg.eval_scenes, recipe.image_size, seed=recipe.seed + 1_000_003)
    print(
        f"clip: {n_params / 1e6:.2f} M parameters ({mcfg.timm_model_name} vision tower), "
        f"{cfg.steps} steps of {cfg.batch_size} scenes{'' if cfg.hard_negatives == 'none' else f' + their wrong variants ({cfg.hard_negatives})'}"
        + (f", resuming after step {step}" if resume else "")
    )

    def save() -> None:
        run_dir.save({"model": model}, {"step": step, "opt": opt.state_dict(), "sched": sched.state_dict()})

    start = time.time()
    row: dict[str, Any] = rows[-1] if rows else {}
    bar = tqdm(total=cfg.steps, initial=step, desc="clip", dynamic_ncols=True, disable=not progress)
    interrupted = False
    try:
        with run_dir.metrics_log(rows) as log, StopSignal(acc) as stop:
            while step < cfg.steps:
                images, captions = step_batch(recipe, step)
                unique = list(dict.fromkeys(captions))
                index = {c: i for i, c in enumerate(unique)}
                pixels = torch.stack([preprocess(im) for im in images]).to(acc.device)
                tokens = tokenizer(unique).to(acc.device)
                target = torch.tensor([index[c] for c in captions], device=acc.device)
                with acc.autocast():
                    loss = clip_loss(model, pixels, tokens, target)
                opt.zero_grad(set_to_none=True)
                acc.backward(loss)
                if cfg.max_grad_norm is not None:
                    acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                opt.step()
                sched.step()
                with torch.no_grad():
                    model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
                step += 1
                row = {
                    "step": step,
                    "loss": loss.item(),
                    "logit_scale": model.logit_scale.exp().item(),
                    "lr": sched.get_last_lr()[0],
                    "seconds": time.time() - start,
                }
                if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
                    row.update(evaluate_clip(model, preprocess, tokenizer, held_out, acc.device))
                    msg = (
                        f"step {step}: loss {row['loss']:.3f}  held-out true>wrong  caption {row['eval/text_acc/all']:.3f} "
                        f"(gap {row['eval/text_gap/all']:.1f})  image {row['eval/image_acc/all']:.3f} (gap {row['eval/image_gap/all']:.1f})"
                    )
                    (bar.write if progress else print)(msg)
                log(row)
                bar.update(1)
                if stop.after_step(step, cfg.steps, cfg.save_every, save):
                    interrupted = True
                    break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    save()
    if interrupted:
        stop_interrupted(acc, run_dir.checkpoint, step)
    model.eval()
    for target_dir in [out / "model"] + ([Path(recipe.save_to)] if recipe.save_to else []):
        save_clip(model, mcfg, target_dir)
        print(f"saved the CLIP model to {target_dir} (clip_score: model: local-dir:{target_dir})")
    acc.end_training()
    return row


def load_trained_clip(folder: str | Path, device: str = "cpu") -> tuple[Any, Any, Any]:
    """(model, transform, tokenizer) of a saved folder, through the `clip_score` metric's loader."""
    from .metrics.clip_score import load_open_clip

    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise MaskGRPOError(f"{folder}: not a trained CLIP folder ({CONFIG_FILE} and {WEIGHTS_FILE} needed)")
    return load_open_clip(f"local-dir:{folder}", None, device)
