"""``medssl augment-preview RECIPE [KEY=VALUE ...] --out views.png``: see what a policy does.

Loads the recipe, takes the first ``--n-images`` images of its dataset, asks the policy
for exactly the views the recipe's enabled objectives request, and writes a PNG grid
(:func:`medssl.augment.preview.write_preview`). Nothing is trained.
"""

from __future__ import annotations

import click

__all__ = ["augment_preview"]


@click.command("augment-preview")
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False, path_type=str))
@click.argument("overrides", nargs=-1)
@click.option(
    "--out",
    default="views.png",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=str),
    help="PNG file to write.",
)
@click.option(
    "--n-images",
    default=4,
    show_default=True,
    type=click.IntRange(min=1, max=32),
    help="Images (rows) to show.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the views.")
def augment_preview(
    recipe: str, overrides: tuple[str, ...], out: str, n_images: int, seed: int
) -> None:
    """Write a grid of the augmented views of a few images of RECIPE's dataset."""
    import torch

    from medssl.augment.preview import write_preview
    from medssl.config import RecipeError, build_component, load_recipe
    from medssl.plugins import PluginError, load_registry
    from medssl.types import ViewRequest

    try:
        registry = load_registry()
        resolved = load_recipe(recipe, overrides, registry)
        dataset = build_component(registry, resolved.data)
        policy = build_component(registry, resolved.augmentation)
        objectives = [build_component(registry, spec) for spec in resolved.enabled_objectives]
    except (RecipeError, PluginError) as exc:
        raise click.ClickException(str(exc)) from None
    patch_size = int(resolved.backbone.options.get("patch_size", 14))
    request = ViewRequest(patch_size=patch_size)
    for objective in objectives:
        request = request | objective.request(patch_size)
    if not (request.global_crops or request.local_crops or request.single_view):
        request = ViewRequest(global_crops=True, local_crops=True, patch_size=patch_size)

    samples = [dataset[i] for i in range(min(n_images, len(dataset)))]
    samples = [s for s in samples if isinstance(s, dict) and "image" in s]
    if not samples:
        raise click.ClickException(f"the dataset of {recipe} yielded no images")
    shapes = {tuple(s["image"].shape) for s in samples}
    if len(shapes) > 1:
        raise click.ClickException(
            f"the first images of the dataset have different shapes {sorted(shapes)}; set the "
            f"dataset's resize option so a batch stacks"
        )
    images = torch.stack([s["image"] for s in samples])
    text = [s.get("text", "") for s in samples] if request.text else None
    try:
        path = write_preview(policy, images, out, request, seed=seed, text=text)
    except ValueError as exc:
        raise click.ClickException(f"augmentation {resolved.augmentation.name!r}: {exc}") from None
    click.echo(f"wrote {path} ({len(samples)} images, policy {resolved.augmentation.name!r})")
