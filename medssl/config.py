"""Loading a recipe: its YAML and ``KEY=VALUE`` overrides (OmegaConf), validated block by block.

A recipe may extend another with ``extends: other.yaml`` (a path relative to the recipe).
The top level is checked by :class:`~medssl.recipe_schema.Recipe`; each component block (``data``,
``augmentation``, ``backbone``, every objective and evaluator) is then checked by the
``Options`` model of the factory its ``name`` resolves to, so every error names the file,
the key path and what was expected.
"""

from __future__ import annotations

import difflib
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import ValidationError

from medssl.plugins import Registry, UnknownComponentError
from medssl.recipe_schema import (
    MAX_WEIGHT,
    ComponentSpec,
    Recipe,
    RecipeError,
    ResolvedRecipe,
    TrainOptions,
)

__all__ = [
    "RecipeError",
    "Recipe",
    "TrainOptions",
    "ComponentSpec",
    "ResolvedRecipe",
    "load_recipe",
    "resolve_recipe",
    "build_component",
    "validate_block",
]


#: Blocks whose options belong to the component they name: naming another component in a
#: child recipe or an override starts that block afresh instead of merging foreign options.
COMPONENT_BLOCKS = ("data", "augmentation", "backbone")


def _merge(base: DictConfig, child: DictConfig) -> DictConfig:
    merged = OmegaConf.merge(base, child)
    for key in COMPONENT_BLOCKS:
        new = child.get(key)
        old = base.get(key)
        if (
            isinstance(new, DictConfig)
            and isinstance(old, DictConfig)
            and new.get("name") is not None
            and new.get("name") != old.get("name")
        ):
            merged[key] = new
    return merged


#: A recipe is a page of YAML; anything larger is not one (and is not read into memory).
MAX_RECIPE_BYTES = 1 << 20
#: Nodes a recipe may expand to once YAML aliases are followed: a few hundred is usual; the
#: "billion laughs" alias bomb (400 bytes) would expand to billions.
MAX_YAML_NODES = 100_000
RECIPE_SUFFIXES = (".yaml", ".yml")


def _read_recipe_text(path: Path, source: str) -> str:
    """The text of a recipe file: a regular file of bounded size, UTF-8.

    Errors never quote the file: ``extends:`` may point anywhere, and its contents are not
    the user's to print.
    """
    try:
        if not path.is_file():  # False for FIFOs, devices, missing files and symlink loops
            what = "not a regular file" if path.exists() else "not found"
            raise RecipeError(f"recipe file {what}: {path}", source)
        if path.stat().st_size > MAX_RECIPE_BYTES:
            raise RecipeError(
                f"recipe file {path} is larger than {MAX_RECIPE_BYTES >> 20} MiB; not a recipe",
                source,
            )
        with path.open("rb") as fh:
            raw = fh.read(MAX_RECIPE_BYTES + 1)
    except OSError as exc:
        raise RecipeError(f"cannot read recipe file {path}: {exc.strerror}", source) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(
            f"recipe file {path} is not UTF-8 text (byte {exc.start})", source
        ) from None


def _yaml_error(exc: Exception) -> str:
    # PyYAML's own text quotes the offending lines; keep the problem and its position only.
    problem = getattr(exc, "problem", None) or type(exc).__name__
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{problem}{where}"


def _check_yaml_size(text: str, source: str) -> None:
    """Refuse YAML whose aliases expand past :data:`MAX_YAML_NODES` (or into a cycle),
    counted on the composed node graph before anything is expanded."""
    import yaml
    from omegaconf._utils import get_yaml_loader

    try:
        root = yaml.compose(text, Loader=get_yaml_loader())
    except yaml.YAMLError as exc:
        raise RecipeError(f"cannot parse YAML: {_yaml_error(exc)}", source) from None
    if root is None:
        return
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise RecipeError("cannot parse YAML: an alias refers to itself", source)
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        active.discard(key)
        sizes[key] = min(total, MAX_YAML_NODES + 1)
        return sizes[key]

    try:
        expanded = size(root)
    except RecursionError:
        raise RecipeError("cannot parse YAML: nested too deeply", source) from None
    if expanded > MAX_YAML_NODES:
        raise RecipeError(
            f"YAML aliases expand this recipe past {MAX_YAML_NODES} values; refused (an "
            "alias bomb, or a recipe to split up)",
            source,
        )


def _load_yaml(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    source = str(path)
    text = _read_recipe_text(path, source)
    _check_yaml_size(text, source)
    try:
        conf = OmegaConf.load(io.StringIO(text))
    except (OmegaConfBaseException, ValueError) as exc:
        raise RecipeError(f"cannot parse YAML: {_yaml_error(exc)}", source) from None
    except Exception as exc:  # yaml.YAMLError and friends
        raise RecipeError(f"cannot parse YAML: {_yaml_error(exc)}", source) from None
    if not isinstance(conf, DictConfig):
        raise RecipeError("a recipe must be a mapping at the top level", source)
    base = conf.get("extends")
    if base:
        if not isinstance(base, str) or not base.lower().endswith(RECIPE_SUFFIXES):
            raise RecipeError(
                "extends must name a recipe file ending in .yaml or .yml", source, "extends"
            )
        try:
            base_path = (path.parent / base).resolve(strict=True)
        except (OSError, RuntimeError):  # missing, or a symlink loop
            raise RecipeError(
                f"extends: {base} cannot be opened (missing, or a symlink loop)", source, "extends"
            ) from None
        here = path.resolve()
        if base_path in (*seen, here):
            chain = " -> ".join(str(p) for p in (*seen, here, base_path))
            raise RecipeError(f"recipes extend each other in a loop: {chain}", source)
        parent = _load_yaml(base_path, (*seen, here))
        if not set(parent) <= set(Recipe.model_fields):
            # Its keys are not named: they may be the first line of any file.
            raise RecipeError(
                f"extends: {base} is not a medssl recipe (unknown top-level keys)",
                source,
                "extends",
            )
        conf = _merge(parent, conf)
        conf.extends = None
    return conf


def _parse_overrides(overrides: Sequence[str], source: str) -> DictConfig:
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"override {item[:80]!r} is not KEY=VALUE", source)
        _check_yaml_size(value, f"{source}: override {key[:80]}")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as exc:
        raise RecipeError(f"bad override: {exc}", source) from None
    except Exception as exc:  # yaml.YAMLError: a value that is no YAML ('[', '*alias', tags)
        raise RecipeError(f"bad override value: {_yaml_error(exc)}", source) from None


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> tuple[dict[str, Any], str]:
    """The merged plain mapping of a recipe file and its overrides (not validated)."""
    path = Path(path)
    source = str(path)
    conf = _load_yaml(path)
    if overrides:
        try:
            conf = _merge(conf, _parse_overrides(overrides, source))
        except OmegaConfBaseException as exc:  # e.g. a list where the recipe has a mapping
            key = getattr(exc, "full_key", None) or None
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise RecipeError(f"bad override: {message}", source, key) from None
    try:
        plain = OmegaConf.to_container(conf, resolve=True)
    except OmegaConfBaseException as exc:
        raise RecipeError(f"cannot resolve interpolation: {exc}", source) from None
    assert isinstance(plain, dict)
    return plain, source


def _loc(prefix: str, loc: Sequence[Any]) -> str:
    return ".".join([prefix, *(str(p) for p in loc)]) if prefix else ".".join(map(str, loc))


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


#: Integers past 64 bits fit no tensor, array or ``len()``: refused before any is built.
MAX_INT = 2**63 - 1


def _non_finite(value: Any, key: str = "") -> str | None:
    """The key path of the first NaN, infinite or beyond-64-bit number in a plain config."""
    if isinstance(value, float) and not math.isfinite(value):
        return key or "(top level)"
    if isinstance(value, int) and abs(value) > MAX_INT:
        return key or "(top level)"
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for k, v in items:
        found = _non_finite(v, f"{key}.{k}" if key else str(k))
        if found:
            return found
    return None


def _pydantic_error(
    exc: ValidationError, source: str, prefix: str, known: Sequence[str]
) -> RecipeError:
    lines = []
    first_key = None
    for err in exc.errors():
        key = _loc(prefix, err["loc"])
        first_key = first_key or key
        if err["type"] == "extra_forbidden":
            unknown = str(err["loc"][-1]) if err["loc"] else ""
            close = difflib.get_close_matches(unknown, list(known), n=1, cutoff=0.6)
            hint = f" — did you mean {close[0]!r}?" if close else ""
            expected = f"; valid options: {', '.join(sorted(known))}" if not close else ""
            lines.append(f"{key[:120]}: unknown option{hint}{expected}")
        elif err["type"] == "missing":
            lines.append(f"{key}: required key is missing")
        else:
            got = err.get("input")
            got_text = f" (got {_short(got)})" if not isinstance(got, dict | list) else ""
            lines.append(f"{key}: {err['msg']}{got_text}")
    return RecipeError("; ".join(lines), source, first_key)


def validate_block(
    registry: Registry, kind: str, block: Any, key: str, source: str, *, weighted: bool = False
) -> ComponentSpec:
    """One component block (``{name: ..., <options>}``) checked against the ``kind``
    registered under its name: its ``Options`` validated, errors raised as
    :class:`RecipeError` naming ``source`` and the key path ``key``."""
    if not isinstance(block, dict):
        raise RecipeError(f"expected a mapping with a 'name' key, got {block!r}", source, key)
    block = dict(block)
    weight = 1.0
    if weighted:
        weight = block.pop("weight", 1.0)
        if not isinstance(weight, int | float) or isinstance(weight, bool):
            raise RecipeError(f"weight must be a number, got {weight!r}", source, f"{key}.weight")
        if not 0 <= weight <= MAX_WEIGHT:
            raise RecipeError(
                f"weight must be in [0, {MAX_WEIGHT:g}], got {_short(weight)}",
                source,
                f"{key}.weight",
            )
    name = block.pop("name", None)
    if name is None:
        raise RecipeError(f"required key is missing (the {kind} to use)", source, f"{key}.name")
    try:
        component = registry.get(kind, str(name))
    except UnknownComponentError as exc:
        raise RecipeError(str(exc), source, f"{key}.name") from None
    model = component.options_model
    if model is None:
        options = block
    else:
        try:
            options = model.model_validate(block).model_dump()
        except ValidationError as exc:
            raise _pydantic_error(exc, source, key, list(model.model_fields)) from None
    # "inf"/"nan" as text pass a component's float fields (and its `gt=0`) otherwise; a
    # field whose own default is NaN (a missing-label marker) may take it.
    defaults = model.model_fields if model is not None else {}
    for option in block:
        bad = _non_finite(options.get(option), option)
        field_info = defaults.get(option)
        if bad and not (field_info is not None and _non_finite(field_info.default)):
            raise RecipeError("must be a finite number of at most 64 bits", source, f"{key}.{bad}")
    return ComponentSpec(
        kind=kind, name=str(name), key=key, options=options, weight=float(weight), source=source
    )


def resolve_recipe(config: dict[str, Any], registry: Registry, source: str) -> ResolvedRecipe:
    """Validate a merged recipe mapping against the registry's components."""
    bad = _non_finite(config)
    if bad:
        raise RecipeError("must be a finite number of at most 64 bits", source, bad)
    try:
        recipe = Recipe.model_validate(config)
    except ValidationError as exc:
        known = list(Recipe.model_fields)
        if any(err["loc"][:1] == ("train",) for err in exc.errors()):
            known = list(TrainOptions.model_fields)
        raise _pydantic_error(exc, source, "", known) from None
    objectives = []
    for key, block in recipe.objectives.items():
        block = {"name": key, **(block or {})}
        objectives.append(
            validate_block(registry, "objective", block, f"objectives.{key}", source, weighted=True)
        )
    if not objectives:
        raise RecipeError(
            "no objective is named; add at least one (e.g. dino)", source, "objectives"
        )
    if not any(spec.weight for spec in objectives):
        raise RecipeError("every objective has weight 0: nothing to train", source, "objectives")
    evaluators = [
        validate_block(registry, "evaluator", block, f"eval.{i}", source)
        for i, block in enumerate(recipe.eval)
    ]
    from medssl.engine.adapt import split_adaptation

    backbone_block, adaptation = split_adaptation(recipe.backbone, source)
    return ResolvedRecipe(
        config=config,
        recipe=recipe,
        source=source,
        data=validate_block(registry, "dataset", recipe.data, "data", source),
        augmentation=validate_block(
            registry, "augmentation", recipe.augmentation, "augmentation", source
        ),
        backbone=validate_block(registry, "backbone", backbone_block, "backbone", source),
        objectives=objectives,
        evaluators=evaluators,
        adaptation=adaptation,
    )


def load_recipe(
    path: str | Path, overrides: Sequence[str] = (), registry: Registry | None = None
) -> ResolvedRecipe:
    """Load, merge, override and validate a recipe file."""
    if registry is None:
        from medssl.plugins import load_registry

        registry = load_registry()
    config, source = load_config(path, overrides)
    return resolve_recipe(config, registry, source)


def build_component(registry: Registry, spec: ComponentSpec, **extra: Any) -> Any:
    """Instantiate a validated block; errors name the block and the plugin providing it."""
    component = registry.get(spec.kind, spec.name)
    try:
        return component.factory(**spec.options, **extra)
    except (ValueError, TypeError, OSError, OverflowError) as exc:
        text = str(exc) if len(str(exc)) <= 600 else f"{str(exc)[:597]}..."
        raise RecipeError(
            f"{spec.kind} {spec.name!r} (from plugin {component.provider.name!r}) could not be "
            f"built: {text}",
            spec.source,
            spec.key,
        ) from exc
