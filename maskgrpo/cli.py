"""`maskgrpo` command line. User mistakes print one line and exit 2 (`--debug` for a traceback)."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from .errors import MaskGRPOError


def _recipe(args: argparse.Namespace):
    from .recipe import load_recipe

    return load_recipe(args.recipe, args.set)


def cmd_list(args: argparse.Namespace) -> int:
    from .registry import REGISTRIES, get_registry, load_entry_point_plugins, load_plugins

    load_entry_point_plugins()
    load_plugins(args.plugin or [])
    kinds = [get_registry(args.kind).kind] if args.kind else list(REGISTRIES)
    for kind in kinds:
        reg = REGISTRIES[kind]
        print(f"{kind}:")
        for name in reg.names():
            print(f"  {name:<24} {reg.get(name).description}")
        for preset in reg.presets():
            print(f"  {preset.name:<24} [preset: {preset.spec['type']}] {preset.description}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .recipe import read_yaml

    kind = read_yaml(args.recipe).get("kind")
    if kind == "vq":
        from .vq_train import load_vq_recipe

        recipe = load_vq_recipe(args.recipe, args.set)
    elif kind == "clip":
        from .clip_train import load_clip_recipe

        recipe = load_clip_recipe(args.recipe, args.set)
    else:
        recipe = _recipe(args)
    plan = None
    if kind in ("grpo", "sft"):
        from .planner import plan_recipe

        _check_cheap_components(recipe)
        _check_evaluation(recipe)
        plan = plan_recipe(recipe, args.num_processes, args.prompt_length)  # refuses batches that cannot split
    print(f"{args.recipe}: ok ({recipe.kind} recipe '{recipe.name}')")
    if plan is not None:
        print("\n".join(plan.lines()))
    if args.show:
        print(recipe.model_dump_json(indent=2))
    return 0


def _check_cheap_components(recipe) -> None:
    """Build what costs nothing to build (samplers, estimator), so `check` refuses every setting
    their constructors refuse in `train` (gen_length vs block_length, steps vs blocks, ...), with
    the same one-line message."""
    from .registry import estimators, samplers

    for field in ("sampler", "eval_sampler"):
        spec = getattr(recipe, field)
        if spec is not None:
            try:
                samplers.build(spec, where=field)
            except MaskGRPOError as err:
                raise MaskGRPOError(f"{recipe.source}: {err}") from None
    if recipe.estimator is not None:
        try:
            estimators.build(recipe.estimator, where="estimator")
        except MaskGRPOError as err:
            raise MaskGRPOError(f"{recipe.source}: {err}") from None


def _check_evaluation(recipe) -> None:
    """What `check` can know about the run's evaluation without building models: is there eval
    data, and (images) which metric scores it."""
    from .components import eval_metric_spec
    from .registry import tasks

    task = tasks.build(recipe.task, where="task")
    if not task.eval_examples():
        print(f"{recipe.source}: note: task has no eval data; the run reports no evaluation (score it with `maskgrpo eval`)")
    elif recipe.image_tokenizer is not None:
        try:
            eval_metric_spec(recipe.eval_metric, task)
        except MaskGRPOError as err:
            raise MaskGRPOError(f"{recipe.source}: {err}") from None


def cmd_sft(args: argparse.Namespace) -> int:
    from .sft import run_sft

    recipe = _recipe(args)
    if recipe.kind != "sft":
        raise MaskGRPOError(f"{args.recipe}: kind is '{recipe.kind}', `maskgrpo sft` needs an sft recipe")
    _run_options(args)
    run_sft(recipe, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    return 0


def _run_options(args: argparse.Namespace) -> None:
    if args.resume and args.overwrite:
        raise MaskGRPOError(f"{args.command}: --resume continues a run and --overwrite replaces it; give one")


def cmd_train_vq(args: argparse.Namespace) -> int:
    from .vq_train import load_vq_recipe, train_vq

    _run_options(args)
    train_vq(load_vq_recipe(args.recipe, args.set), resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    return 0


def cmd_train_clip(args: argparse.Namespace) -> int:
    from .clip_train import load_clip_recipe, train_clip

    _run_options(args)
    train_clip(load_clip_recipe(args.recipe, args.set), resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .trainer import run_grpo

    _run_options(args)
    run_grpo(_recipe(args), resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite)
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from .components import load_model
    from .eval.generate import prompt_overflow
    from .generation import generate
    from .recipe import MAX_TOKENS
    from .registry import samplers

    for flag, value in (("--gen-length", args.gen_length), ("--block-length", args.block_length), ("--steps", args.steps)):
        if value is not None and value > MAX_TOKENS:
            raise MaskGRPOError(f"sample: {flag} {value} is more than {MAX_TOKENS:,}, the most this library runs")
    torch.manual_seed(args.seed)
    spec = {"type": args.sampler, "gen_length": args.gen_length, "block_length": args.block_length or args.gen_length, "steps": args.steps}
    if args.temperature is not None:
        spec["temperature"] = args.temperature
    sampler = samplers.build(spec, where="sampler")
    backbone, tokenizer = load_model(args.model)
    prompts = args.prompt or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    over = prompt_overflow(backbone, tokenizer, args.gen_length, prompts)
    if over is not None:
        index, tokens, limit = over
        raise MaskGRPOError(f"sample: prompt {index + 1} of {tokens} tokens + --gen-length {args.gen_length} exceeds {args.model}'s max_length {limit}")
    for prompt, completion in zip(prompts, generate(backbone, tokenizer, sampler, prompts, seed=args.seed)):
        print(f"{prompt}\t{completion}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .eval import run_eval_cli

    return run_eval_cli(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskgrpo", description="GRPO for masked discrete diffusion models")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="registered components and presets")
    p.add_argument("kind", nargs="?", help="backbones, tokenizers, samplers, estimators, rewards, metrics, tasks, ...")
    p.add_argument("--plugin", action="append", help="module or .py file to import first")
    p.set_defaults(func=cmd_list)

    def recipe_parser(name: str, help: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=help)
        q.add_argument("recipe")
        q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field, e.g. grpo.beta=0.01")
        q.set_defaults(func=func)
        return q

    def add_run_options(q: argparse.ArgumentParser) -> None:
        q.add_argument("--resume", action="store_true", help="continue from output_dir/checkpoint (same process count)")
        q.add_argument("--overwrite", action="store_true", help="start over in an output_dir that holds an earlier run's checkpoint")
        q.add_argument("--no-progress", action="store_true")

    c = recipe_parser("check", "validate a recipe, print its batch plan and memory estimate (builds nothing heavy)", cmd_check)
    c.add_argument("--show", action="store_true", help="print the resolved recipe")
    c.add_argument("--num-processes", type=int, default=None, metavar="N", help="plan for N processes (default: the recipe's accelerate config, else 1)")
    c.add_argument("--prompt-length", type=int, default=None, metavar="T", help="prompt tokens for the memory estimate (default: max_length - completion, else 256)")
    add_run_options(recipe_parser("sft", "masked-diffusion supervised training", cmd_sft))
    add_run_options(recipe_parser("train-vq", "train a VQ image tokenizer on shapes renders", cmd_train_vq))
    add_run_options(recipe_parser("train-clip", "train a small open_clip CLIP on shapes renders and prompts", cmd_train_clip))
    add_run_options(recipe_parser("train", "GRPO training", cmd_train))

    s = sub.add_parser("sample", help="generate completions from a model preset or folder")
    s.add_argument("--model", required=True, help="preset name or model folder")
    s.add_argument("--prompt", action="append", help="prompt (repeatable); default: one per line on stdin")
    s.add_argument("--sampler", default="low_confidence")
    s.add_argument("--gen-length", type=int, default=8)
    s.add_argument("--block-length", type=int, default=None)
    s.add_argument("--steps", type=int, default=8)
    s.add_argument("--temperature", type=float, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("eval", help="score a model or existing outputs on an evaluation suite")
    e.add_argument("suite", help="a suite name (bundled: arith, gsm8k, math500, geneval, shapes; or one in $MASKGRPO_SUITES) or a suite YAML file")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="preset name or model folder: generate, then score")
    src.add_argument("--outputs", help="JSONL of completions or a GenEval-layout folder of images: score only")
    e.add_argument("--out", default=None, help="folder for results.json and samples.jsonl")
    e.add_argument("--limit", type=int, default=None, help="score only the first N prompts")
    e.add_argument("--skip-bad", action="store_true", help="skip malformed rows, and score an unreadable image as a failed sample (counted in results.json)")
    e.add_argument("--exclude-unreadable", action="store_true", help="leave unreadable images out of the score (counted in results.json as excluded)")
    e.add_argument("--batch-size", type=int, default=64, help="samples per generation / scoring batch")
    e.add_argument("--device", default="auto", help="device for generation (--model): auto, cpu, cuda, ...")
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a suite field, e.g. sampler.steps=64")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import maskgrpo  # noqa: F401  (registers the built-in components)

        return args.func(args)
    except MaskGRPOError as err:
        if args.debug:
            raise
        print(f"maskgrpo: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
