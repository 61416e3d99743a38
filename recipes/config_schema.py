"""What a run's settings may be: the top-level `seed`, the training stages (`pretrain`, `finetune`),
`model`, `compute` and `probes`, written once as schemas and checked once per run, before any data is
prepared — by experiment.execute, and on the command line already by run.py, before Hydra makes a run
folder. A bad value is refused in one line naming the option and its rule, e.g.
`finetune.bucket_pool=-1 must be a whole number of batches >= 0 (0 = off)`.

Pydantic models in strict mode, validating each section's resolved plain values: strict, because
Python's own conversions would let bad values through (1.5 is no step count, "3" is no number, true is
no 1); the plain values, because the check must never change the config: a Hydra structured config
typed `float` would store `lr: 1` as 1.0, and with it change the run's config_hash. The models are
only asked; what the recipes read is the composed config, as written. Each field's description is
the rule that the error line states.

What needs more than the config stays where that is known: a pooling or an objective against the
backbone's direction (model.pooling_for, stages.objective_for), pixel_loss against the task's inputs
(stages.pixel_loss_for), a precision or pinned memory against the device (engine.compute.resolve).
"""

from __future__ import annotations

from typing import Annotated, Literal

from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from recipes.engine.compute import PRECISIONS
from recipes.engine.guard import ON_NAN
from recipes.errors import ConfigError
from recipes.extras import probes
from recipes.model import POOLINGS
from recipes.stages import INPUTS, OBJECTIVES

Positive = Annotated[int, Field(gt=0)]
Whole = Annotated[int, Field(ge=0)]


def rule(text: str, default=...):
    """A field whose error line says `text`; without `default` the key must be in the config."""
    return Field(default, description=text)


class Section(BaseModel):
    # strict: no conversion (see above); extra keys allowed: a plugin recipe may read settings of its own.
    model_config = ConfigDict(strict=True, extra="allow")


class Top(Section):
    seed: Whole = rule("must be a non-negative integer")


class Stage(Section):
    """A training stage's settings (recipes/engine/loop.py fit). Keys with a default may be left out."""

    epochs: Positive = rule("must be a positive integer")
    batch_size: Positive = rule("must be a positive integer")
    eval_batch_size: Positive = rule("must be a positive integer")
    lr: Annotated[float, Field(gt=0)] = rule("must be a number > 0")
    betas: Annotated[list[Annotated[float, Field(ge=0, lt=1)]], Field(min_length=2, max_length=2)] = rule(
        "must be two numbers in [0, 1), e.g. [0.9, 0.98]")
    weight_decay: Annotated[float, Field(ge=0)] = rule("must be a number >= 0")
    warmup_steps: Whole = rule("must be a whole number of steps >= 0")
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = rule("must be a number in [0, 1]")
    grad_clip: Annotated[float, Field(ge=0)] = rule("must be a number >= 0 (0 = off)")
    bucket_pool: Whole | None = rule("must be a whole number of batches >= 0 (0 = off)", 0)
    max_steps: Positive | None = rule("must be a positive integer or null", None)
    eval_every: Positive | None = rule("must be a positive integer or null", None)
    ckpt_every: Positive | None = rule("must be a positive integer or null", None)
    patience: Positive | None = rule("must be a positive integer or null", None)
    min_steps: Positive | None = rule("must be a positive integer or null", None)
    on_nan: Literal[ON_NAN] = rule(f"must be one of {', '.join(ON_NAN)}", "stop")


class Finetune(Stage):
    init_from: str | None = rule("must be the path of an exported body (python -m recipes.extras.export), or null",
                                 None)


class Pretrain(Stage):
    seed: Whole = rule("must be a non-negative integer")
    objective: Literal[OBJECTIVES] = rule(f"is not one of {', '.join(OBJECTIVES)}")
    mask_ratio: Annotated[float, Field(gt=0, lt=1)] | None = rule(
        "must be a number in (0, 1), or null for the task's default", None)
    pixel_loss: Literal["ce", "l1"] | None = rule("must be ce, l1, or null for the task's default", None)
    inputs: Literal[INPUTS] = rule(f"is not one of {', '.join(INPUTS)}", "labelled")


class Model(Section):
    pooling: Literal[("auto", *POOLINGS)] = rule(f"is not one of auto, {', '.join(POOLINGS)}")


class Compute(Section):
    precision: Literal[("auto", *PRECISIONS)] = rule(f"is not one of auto, {', '.join(PRECISIONS)}")
    compile: bool = rule("must be true or false")
    micro_batch_size: Positive | None = rule("must be a positive integer or null")
    num_workers: Whole = rule("must be an integer >= 0")
    pin_memory: Literal["auto"] | bool = rule("must be auto, true or false")


class Probes(Section):
    model_config = ConfigDict(extra="forbid")  # every key is the probes' own: a misspelt one is refused

    enabled: bool = rule("must be true or false")
    n_examples: Positive = rule("must be a whole number >= 1")
    positions: Positive = rule("must be a whole number >= 1")
    directions: Positive | None = rule("must be a whole number >= 1 or null (exact)")
    window: Whole = rule("must be a whole number >= 0")
    seed: Whole = rule("must be a whole number >= 0")


STAGES = {"pretrain": Pretrain, "finetune": Finetune}  # a plugin recipe's other stages: the common settings


def check(cfg: DictConfig, stages: tuple[str, ...]) -> None:
    """Refuse the first bad value of the run's settings in one line (ConfigError). Only the stages
    the recipe runs are checked: a grid over recipes may set pretrain.* for all of them."""
    sections = [("", Top, cfg), ("model", Model, cfg.get("model")), ("compute", Compute, cfg.get("compute")),
                ("probes", Probes, cfg.get("probes"))]
    sections += [(stage, STAGES.get(stage, Stage), cfg.get(stage)) for stage in stages]
    for name, schema, node in sections:
        values = OmegaConf.to_container(node, resolve=True) if node is not None else {}
        if schema is Probes:
            values = {**probes.DEFAULTS, **values}  # the probes' defaults stand for keys left out
        try:
            schema.model_validate(values)
        except ValidationError as exc:
            raise ConfigError(one_line(name, schema, values, exc.errors()[0])) from None


def one_line(section: str, schema: type[Section], values: dict, error: dict) -> str:
    key = error["loc"][0]  # a list's item (betas[1]) or a union's member: the whole option is named
    where = f"{section}.{key}" if section else str(key)
    if error["type"] == "missing":
        return f"{where} is missing from the config: add it with +{where}=..."
    if error["type"] == "extra_forbidden":
        return f"{where} is not a {section} setting; the settings are {', '.join(schema.model_fields)}"
    return f"{where}={values[key]!r} {schema.model_fields[key].description}"
