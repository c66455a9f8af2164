"""Which weights a training run exports, on weakly labelled data.

On UCF-Crime the only validation signal from training videos is the video-level
AUC of bag maxima; it saturates after a few epochs and says little about
frame-level localisation (a run on the real ResNet3D-34 set stopped after 11
epochs with "best epoch 0"). So by default a run trains for its fixed budget
(``max_epochs``) and exports an exponential moving average of the weights
(Polyak averaging, decay 0.99 per step: about the last 100 steps), which is
stable across seeds without looking at any labels. ``last`` exports the final
weights; ``best_val`` keeps the former rule (best validation epoch, early
stopping with ``patience``), useful when the validation videos are annotated.
"""

from __future__ import annotations

import copy

import torch


def selects_by_validation(selection: str) -> bool:
    return selection == "best_val"


class WeightAverage:
    """An EMA copy of a model: ``avg = d * avg + (1 - d) * weights`` after every step.

    ``d = min(decay, (1 + n) / (10 + n))`` after n updates (the warm-up of
    TensorFlow's ExponentialMovingAverage), so a short run averages its recent
    steps instead of its initial weights. Buffers (batch-norm and normalisation
    statistics) are copied as they are.
    """

    def __init__(self, model: torch.nn.Module, decay: float, updates: int = 0) -> None:
        self.decay = float(decay)
        self.updates = int(updates)
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        decay = self.current_decay()
        self.updates += 1
        for avg, current in zip(self.model.parameters(), model.parameters(), strict=True):
            avg.lerp_(current.detach(), 1.0 - decay)
        for avg, current in zip(self.model.buffers(), model.buffers(), strict=True):
            avg.copy_(current)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)
