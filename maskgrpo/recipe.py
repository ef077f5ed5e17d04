"""Recipes: one YAML file describes a whole run; the schema below is the single source of truth.

Components (backbone, tokenizer, task, samplers, estimator, rewards) are specs resolved by the
registry: a name, a preset, or `{type: name, **kwargs}`. `--set a.b=c` overrides are applied to
the raw YAML before validation, so they are typed exactly like the file.

Paths (`paths.py`): a relative path a recipe reads (a component's `path`, a task's `train_path`,
a reward's `local-dir:` model, `plugins`, `train.accelerate_config`) is relative to the recipe
file and made absolute when the recipe is loaded; a `--set` value is relative to the working
directory; `output_dir` and `save_to` (where a run writes) are relative to the working directory.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar, Union

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import MaskGRPOError, RecipeError, format_validation_error, no_bool_for_numbers, sorted_errors
from .paths import resolve_fields, resolve_override
from .registry import REGISTRIES, load_entry_point_plugins, load_plugins

Spec = Union[str, dict[str, Any]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_not_booleans(cls, value: Any, info: Any) -> Any:
        return no_bool_for_numbers(value, cls.model_fields[info.field_name].annotation, info.field_name)


class RewardSpec(_Strict):
    """One reward term: a registered reward (`type`), its weight and its options."""

    model_config = ConfigDict(extra="allow")
    type: str
    weight: float = 1.0
    name: str | None = Field(None, description="label in logs; default: the type")

    def component(self) -> dict[str, Any]:
        return {"type": self.type, **(self.model_extra or {})}


# Upper bounds on sizes: far beyond any real run, they turn a typo (`group_size: 100000000000`)
# into a one-line error from `check` instead of a MemoryError after the models are loaded.
MAX_ROWS = 1_000_000  # rollout rows per step (prompts_per_step x group_size), batch sizes
MAX_STEPS = 100_000_000  # training steps, warm-up, intervals
MAX_TOKENS = 1_000_000  # sequence sizes: gen_length, block_length, image_tokens, max_length, sampler steps
MAX_ITERATIONS = 10_000  # inner updates per rollout batch
MAX_IMAGE_SIDE = 4096  # rendered / network image sides (pixels) of the vq and clip recipes
MAX_WIDTH = 65_536  # model widths and head counts of the small trainable models
MAX_LAYERS = 1_024
SIZE_OPTIONS = ("gen_length", "block_length", "image_tokens", "steps", "max_length")  # bounded in component specs


def _check_sizes(spec: Any, where: str) -> None:
    """A component spec's size options (SIZE_OPTIONS) are at most MAX_TOKENS."""
    if not isinstance(spec, dict):
        return
    for key in SIZE_OPTIONS:
        value = spec.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > MAX_TOKENS:
            raise ValueError(f"{where}.{key}: {value} is more than {MAX_TOKENS:,}, the most this library runs")


class GRPOConfig(_Strict):
    group_size: int = Field(8, ge=2, le=MAX_ROWS, description="completions per prompt (G)")
    num_iterations: int = Field(4, ge=1, le=MAX_ITERATIONS, description="inner updates per rollout batch (mu)")
    epsilon_low: float = Field(0.2, ge=0)
    epsilon_high: float = Field(0.2, ge=0)
    beta: float = Field(0.0, ge=0, description="k3 KL weight in the loss")
    monitor_kl: bool = Field(
        True, description="compute the KL to the reference (metric `kl`) even at beta 0; without LoRA this keeps a frozen copy of the policy"
    )
    advantage_std: Literal["group", "batch", "none"] = "group"
    loss_agg: Literal["token", "seq"] = "token"
    ref_sync_steps: int | None = Field(None, ge=1, description="copy the policy into the reference every K steps")
    disable_dropout: bool = Field(True, description="zero every dropout in the policy (LoRA's too), as TRL's GRPO does: ratio 1 at mu = 1")
    sft_coef: float = Field(
        0.0,
        ge=0,
        description="PPO-ptx (InstructGPT): add this times the masked-diffusion SFT loss on the step's prompts' reference "
        "completions (the task's targets) to every inner update, so RL keeps what SFT taught where the reward is silent",
    )


class OptimConfig(_Strict):
    lr: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0, le=MAX_STEPS)
    schedule: Literal["constant", "cosine"] = "constant"
    max_grad_norm: float | None = Field(1.0, gt=0)
    grad_accum: int = Field(1, ge=1, le=MAX_ROWS, description="micro-batches per optimiser step")


class EvalSuiteConfig(_Strict):
    """The in-training evaluation as a suite: the number `maskgrpo eval SUITE --model` gives on
    the saved model, computed by the same code at every `train.eval_every` steps."""

    suite: str = Field(description="a bundled suite name (arith, shapes, ...) or a suite YAML, relative to the recipe")
    set: list[str] = Field([], description="suite overrides as in `maskgrpo eval --set`, e.g. samples_per_prompt=8")
    metric: str | None = Field(None, description="which of the suite's numbers is the score (default: overall, else the first)")


class TrainConfig(_Strict):
    steps: int = Field(100, ge=1, le=MAX_STEPS)
    prompts_per_step: int = Field(16, ge=1, le=MAX_ROWS)
    eval_every: int = Field(50, ge=0, le=MAX_STEPS, description="0: evaluate only before and after")
    save_every: int = Field(0, ge=0, le=MAX_STEPS, description="0: save only at the end")
    keep_best: bool = Field(False, description="also keep the policy of the best evaluation (step 0 included) in model-best/")
    device: str = Field("cpu", description="cpu, cuda or auto; under `accelerate launch` each process takes its own device")
    eval_batch_size: int = Field(256, ge=1, le=MAX_ROWS)
    mixed_precision: Literal["no", "bf16", "fp16"] = Field("no", description="autocast with fp32 master weights (accelerate); bf16 works on CPU too")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass (less memory, more time)")
    report_to: list[Literal["tensorboard", "wandb"]] = Field(["tensorboard"], description="trackers beside metrics.jsonl; [] for none")
    accelerate_config: str | None = Field(None, description="the accelerate config this recipe was sized for (relative to the recipe file)")

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value: Any) -> Any:
        return "no" if value is False else value  # YAML reads a bare `no` as false


class SFTConfig(_Strict):
    steps: int = Field(1000, ge=1, le=MAX_STEPS)
    batch_size: int = Field(128, ge=1, le=MAX_ROWS)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(100, ge=0, le=MAX_STEPS)
    eval_every: int = Field(500, ge=0, le=MAX_STEPS)
    min_mask_rate: float = Field(1e-3, gt=0, le=1, description="t ~ U(min_mask_rate, 1)")
    prompt_dropout: float = Field(
        0.0, ge=0, lt=1, description="probability of masking an example's whole prompt, so classifier-free guidance has an unconditional model"
    )
    weighting: Literal["elbo", "masked_mean"] = Field(
        "elbo", description="elbo: LLaDA's 1/t-weighted bound; masked_mean: mean cross-entropy over masked tokens (MaskGIT, for images)"
    )
    save_to: str | None = Field(None, description="also save the trained model (and tokenizer) here")
    save_every: int = Field(0, ge=0, le=MAX_STEPS, description="checkpoint every N steps (0: only at the end or when stopped)")
    schedule: Literal["constant", "cosine"] = Field("cosine", description="after warm-up; cosine decays over `steps`, so a resume with more steps is not exact")
    device: str = "cpu"
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    report_to: list[Literal["tensorboard", "wandb"]] = ["tensorboard"]

    _yaml_no = field_validator("mixed_precision", mode="before")(lambda cls, v: "no" if v is False else v)


class LoraConfig(_Strict):
    r: int = Field(8, ge=1, le=65_536)
    alpha: float = 16
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"


class Recipe(_Strict):
    kind: Literal["grpo", "sft"]
    name: str
    seed: int = 0
    output_dir: str
    plugins: list[str] = []
    backbone: Spec
    tokenizer: Spec
    image_tokenizer: Spec | None = Field(None, description="VQ tokenizer: completions are image codes after the text vocabulary")
    task: Spec
    sampler: Spec
    eval_sampler: Spec | None = Field(None, description="default: the rollout sampler at temperature 0")
    estimator: Spec | None = None
    rewards: list[RewardSpec] = []
    eval_metric: Spec | None = Field(
        None, description="image runs: the metric of the in-training evaluation (default: the task's own, e.g. shapes -> geneval with the shapes detector)"
    )
    eval: EvalSuiteConfig | None = Field(None, description="evaluate on a suite instead of the task's held-out set")
    grpo: GRPOConfig = GRPOConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    sft: SFTConfig | None = None
    lora: LoraConfig | None = None

    # Where the YAML came from: the relative paths it names were resolved against its folder.
    source: str | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _sections_for_kind(self) -> "Recipe":
        if self.kind == "grpo":
            if self.estimator is None:
                raise ValueError("a grpo recipe needs an 'estimator'")
            if not self.rewards:
                raise ValueError("a grpo recipe needs at least one entry in 'rewards'")
        if self.kind == "sft" and self.sft is None:
            raise ValueError("an sft recipe needs an 'sft' section")
        return self

    @model_validator(mode="after")
    def _bounded_sizes(self) -> "Recipe":
        rows = self.train.prompts_per_step * self.grpo.group_size
        if self.kind == "grpo" and rows > MAX_ROWS:
            raise ValueError(
                f"train.prompts_per_step x grpo.group_size: {rows:,} rollout rows per step "
                f"({self.train.prompts_per_step} x {self.grpo.group_size}), more than {MAX_ROWS:,}"
            )
        for field in ("backbone", "sampler", "eval_sampler"):
            _check_sizes(getattr(self, field), field)
        return self

    @property
    def source_dir(self) -> Path:
        return Path(self.source).resolve().parent if self.source else Path.cwd()

    def resolved_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# -- loading -------------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping: a second `train:` section would
    otherwise silently replace the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


MAX_YAML_VALUES = 100_000


def _bounded_size(data: Any, budget: int = MAX_YAML_VALUES) -> int:
    """How many values `data` expands to, counting shared (aliased) nodes each time they appear,
    stopping at `budget`: a few aliases can expand to billions of values (a YAML bomb)."""
    stack, count = [data], 0
    while stack and count <= budget:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return count


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise MaskGRPOError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise RecipeError(f"{path}: not UTF-8 text (byte {err.start})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise RecipeError(f"{path}:{where}: invalid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of fields, got {type(data).__name__}")
    if _bounded_size(data) > MAX_YAML_VALUES:
        raise RecipeError(f"{path}: expands to more than {MAX_YAML_VALUES:,} values (YAML aliases?); refused")
    return data


# The fields of a grpo/sft recipe that hold paths it reads (see `paths.resolve_fields`).
RECIPE_PATHS: dict[str, str] = {
    **{name: "spec" for name in ("backbone", "tokenizer", "image_tokenizer", "task", "sampler", "eval_sampler", "estimator", "rewards", "eval_metric")},
    "plugins": "plugins",
    "train.accelerate_config": "file",
    "eval.suite": "suite",
}


def apply_override(data: dict[str, Any], assignment: str, path_fields: Mapping[str, str] | None = None) -> None:
    """Apply one `a.b.c=value` (value parsed as YAML) in place. A component given by name
    becomes `{type: name}` when one of its options is set. With `path_fields`, relative paths in
    the value are relative to the working directory (they come from the command line)."""
    if "=" not in assignment:
        raise RecipeError(f"--set {assignment!r}: expected KEY=VALUE")
    key, raw = assignment.split("=", 1)
    try:
        value = yaml.load(raw, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError:
        value = raw
    parts = key.strip().split(".")
    if path_fields:
        value = resolve_override(parts, value, path_fields, Path.cwd())
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        path = ".".join(parts[: i + 1])
        if isinstance(node, list):
            node = _list_item(node, part, path)
            continue
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif isinstance(child, str):
            child = node[part] = {"type": child}
        elif not isinstance(child, (dict, list)):
            raise RecipeError(f"--set {key}: '{path}' is a value ({child!r}), not a section")
        node = child
    last = parts[-1]
    if isinstance(node, list):
        index = int(last) if last.isdigit() else None
        if index is None or index >= len(node):
            raise RecipeError(f"--set {key}: no list item '{last}'")
        node[index] = value
    else:
        node[last] = value


def _list_item(node: list[Any], part: str, path: str) -> Any:
    if not part.isdigit() or int(part) >= len(node):
        raise RecipeError(f"--set: '{path}': no list item '{part}' (the list has {len(node)})")
    item = node[int(part)]
    if isinstance(item, str):
        item = node[int(part)] = {"type": item}
    return item


T = TypeVar("T", bound=pydantic.BaseModel)


def read_schema(
    path: str | Path, schema: type[T], overrides: list[str] | None = None, path_fields: Mapping[str, str] | None = None, **extra: Any
) -> T:
    """A YAML file with `--set` overrides applied, validated by `schema` (errors name the file);
    shared by every recipe kind (grpo/sft, vq, clip). The relative paths in `path_fields` are
    made absolute: the file's against its folder, the overrides' against the working directory."""
    data = copy.deepcopy(read_yaml(path))
    if path_fields:
        resolve_fields(data, path_fields, Path(path).resolve().parent, where=str(path))
    for assignment in overrides or []:
        apply_override(data, assignment, path_fields)
    try:
        return schema.model_validate({**data, **extra})
    except pydantic.ValidationError as err:
        raise RecipeError(f"{path}: {format_validation_error(err)}{section_hint(err, schema)}") from None


def section_hint(err: pydantic.ValidationError, schema: type[pydantic.BaseModel]) -> str:
    """For an unknown top-level field that a section has (`mixed_precision`, which lives in
    `train`): `; did you mean train.mixed_precision?`, so the fix is in the error line."""
    first = sorted_errors(err)[0]
    loc = first.get("loc", ())
    if first.get("type") != "extra_forbidden" or len(loc) != 1:
        return ""
    homes = []
    for section, field in schema.model_fields.items():
        model = field.annotation
        if isinstance(model, type) and issubclass(model, pydantic.BaseModel) and loc[0] in model.model_fields:
            homes.append(f"{section}.{loc[0]}")
    return f"; did you mean {' or '.join(homes)}?" if homes else ""


def load_recipe(path: str | Path, overrides: list[str] | None = None, check_components: bool = True) -> Recipe:
    """Read, override, validate. With `check_components`, also load plugins and check every
    component spec against the registry (nothing heavy is built)."""
    recipe = read_schema(path, Recipe, overrides, RECIPE_PATHS, source=str(path))
    if check_components:
        validate_components(recipe, prefix=str(path))
    return recipe


def validate_components(recipe: Recipe, prefix: str = "") -> None:
    load_entry_point_plugins()
    load_plugins(recipe.plugins, recipe.source_dir)
    pre = f"{prefix}: " if prefix else ""
    checks: list[tuple[str, str, Spec | None]] = [
        ("backbones", "backbone", recipe.backbone),
        ("tokenizers", "tokenizer", recipe.tokenizer),
        ("tokenizers", "image_tokenizer", recipe.image_tokenizer),
        ("tasks", "task", recipe.task),
        ("samplers", "sampler", recipe.sampler),
        ("samplers", "eval_sampler", recipe.eval_sampler),
        ("estimators", "estimator", recipe.estimator),
        ("metrics", "eval_metric", recipe.eval_metric),
    ]
    checks += [("rewards", f"rewards.{i}", r.component()) for i, r in enumerate(recipe.rewards)]
    for kind, field, spec in checks:
        if spec is None:
            continue
        try:
            REGISTRIES[kind].validate(spec, where=field)
        except MaskGRPOError as err:
            raise type(err)(f"{pre}{err}") from None
    if recipe.eval is not None:
        from .eval.suite import load_suite  # the suite loader reads YAML through this module

        try:
            suite = load_suite(recipe.eval.suite, recipe.eval.set)
        except MaskGRPOError as err:
            raise type(err)(f"{pre}eval.suite: {err}") from None
        if (suite.modality == "image") != (recipe.image_tokenizer is not None):
            mine = "an image" if recipe.image_tokenizer is not None else "a text"
            theirs = "an image" if suite.modality == "image" else "a text"
            raise RecipeError(f"{pre}eval.suite: '{recipe.eval.suite}' is {theirs} suite; this is {mine} recipe")
