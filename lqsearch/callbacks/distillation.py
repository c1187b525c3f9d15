"""``PolicyDistillation``: fit the kurtosis policy to a finished search and draw it."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image, ImageDraw

from lqsearch.policy.rule import KurtosisPolicy, fit_policy
from lqsearch.search.module import TransformSearch
from lqsearch.storage import atomic_file

FIRST, OTHER, LINE = (214, 51, 38), (38, 89, 230), (40, 40, 40)  # first candidate red, others blue


def policy_figure(policy: KurtosisPolicy, z: dict[str, list[float]], choices: list[dict[str, str]]) -> Image.Image:
    """One panel per unit type: z per block (x), coloured by the searched choice, and the fitted beta."""
    width, panel, margin = 640, 200, 30
    image = Image.new("RGB", (width, panel * len(z)), "white")
    draw = ImageDraw.Draw(image)
    for row, (unit, scores) in enumerate(z.items()):
        rule, top = policy.rules[unit], row * panel
        low, high = min(scores + [rule.beta]) - 0.5, max(scores + [rule.beta]) + 0.5

        def y(value: float, top: int = top, low: float = low, high: float = high) -> float:
            return top + panel - margin - (value - low) / (high - low) * (panel - 2 * margin)

        draw.line([(margin, y(rule.beta)), (width - margin, y(rule.beta))], fill=LINE, width=1)
        step = (width - 2 * margin) / max(len(choices) - 1, 1)
        for block, choice in enumerate(choices):
            x, colour = margin + block * step, FIRST if choice[unit] == policy.candidates[0] else OTHER
            draw.ellipse([x - 4, y(scores[block]) - 4, x + 4, y(scores[block]) + 4], fill=colour)
        fit = policy.fit[unit]
        draw.text(
            (margin, top + 4),
            f"{unit}: z > {rule.beta:.2f} -> {rule.high}, else {rule.low}; agreement {fit['agreement']:.2f}, "
            f"balanced {fit['balanced_accuracy']:.2f}, spearman(pi, z) {fit['spearman_pi_z']:.2f}",
            fill=LINE,
        )
        draw.text((margin, top + panel - margin + 8), f"block 0 .. {len(choices) - 1}; red = {policy.candidates[0]}", fill=LINE)
    return image


class PolicyDistillation(Callback):
    """At the end of a search fit: ``policy.json`` and ``policy.png`` in the run folder, the
    figure in TensorBoard (``policy/figure``) and ``policy/<unit>/{agreement,balanced_accuracy,
    spearman_pi_z}`` as metrics. Runs only for a complete search over several candidates."""

    def on_train_end(self, trainer: L.Trainer, pl_module: TransformSearch) -> None:
        module = pl_module
        searched = module.hparams.selection == "search" and len(module.candidates) > 1
        if not searched or len(module.finished) < module.num_blocks or not trainer.is_global_zero:
            return
        choices = [record["choice"] for record in module.finished]
        pi_first = {unit: [r["pi"][unit][module.candidates[0]] for r in module.finished] for unit in module.z}
        fitted_on = {"model": module.hparams.model, "model_type": module.source.model.config.model_type, "quant": module.quant.spec, "run": str(trainer.default_root_dir)}
        block_losses = [r["combination_loss"] for r in module.finished] if module.hparams.decide == "loss" else None
        policy = fit_policy(module.z, choices, pi_first, module.candidates, module.kurtosis_weights, fitted_on, block_losses)
        root = Path(trainer.default_root_dir)
        policy.save(root / "policy.json")
        figure = policy_figure(policy, module.z, choices)
        with atomic_file(root / "policy.png") as tmp:
            figure.save(tmp, format="PNG")
        for logger in trainer.loggers:
            logger.log_metrics({f"policy/{unit}/{name}": value for unit, fit in policy.fit.items() for name, value in fit.items()})
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("policy/figure", np.asarray(figure).transpose(2, 0, 1), global_step=len(module.finished))
