"""DiP-GO-style gradient gates: learn which (step, branch level) a sampler can skip.

The unit is what the Schedule can express: the UNet's nested branch levels.
Level 0 is the shallowest branch (``input_blocks[0]``, ``output_blocks[n-1]``,
``out``), level ``j`` adds ``input_blocks[j]`` and ``output_blocks[n-1-j]``,
level ``n`` is the middle block. A step computes levels ``0..e-1`` for some
extent ``e``: ``e = n + 1`` is a full step, ``e = d + 1`` a cached step at
depth ``d``, ``e = 0`` whole-output reuse. So one gate per (step, level),
nested: ``keep[t][j] = g[t][0] * ... * g[t][j]``.

Relaxation: ``g = hard + sigmoid(logit) - sigmoid(logit).detach()`` with
``hard = sigmoid(logit) > 0.5`` (straight-through): the forward pass is
exactly the patched UNet of that schedule, the backward pass sees a smooth
gate. Forward hooks blend the feature each level feeds upwards with the copy
stored when it was last computed (``keep * fresh + (1 - keep) * stored``), as
:mod:`dato.core.patch` does with a Schedule. Every block still runs in training so
that the gradient of a closed gate (fresh minus stored) exists.

Training needs prompts only: targets are the full model's samples from the
same noise; the loss is the relative squared error of the gated sample to the
target plus ``sparsity_weight * max(0, expected MACs fraction - target)``.
Gradient checkpointing per UNet call keeps memory at one call's activations
plus the trajectory.

Post-processing (:func:`schedule_from_gates`) turns the learned logits into a
Schedule at an exact MACs budget: from the learned hard gates, close the
least-needed open levels (lowest logit) until the budget is met, then open the
most-needed closed levels that still fit, so the result lands within one
level's cost of the target.
"""

from dato.generators.gates.gated_unet import GatedUNet
from dato.generators.gates.levels import (
    LevelCosts,
    action_from_extent,
    extent_from_action,
    schedule_from_gates,
    uniform_start,
)
from dato.generators.gates.training import (
    GateCancelled,
    GateConfig,
    GateGenerator,
    GateJob,
    GateResult,
    GateTrainer,
    train_gates,
)

__all__ = [
    "LevelCosts",
    "GateConfig",
    "GateResult",
    "GatedUNet",
    "GateCancelled",
    "GateJob",
    "GateGenerator",
    "GateTrainer",
    "train_gates",
    "schedule_from_gates",
    "uniform_start",
    "action_from_extent",
    "extent_from_action",
]
