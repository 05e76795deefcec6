"""One SimCLR step as the iteration of MONAI's ``SupervisedTrainer``.

With it, checkpoints, resuming, logging and history of the pretraining work as for the other
networks (MONAI's :class:`monai.losses.ContrastiveLoss`, NT-Xent, is the loss).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from monai_app.transforms.views import VIEW_KEYS


class ContrastiveIteration:
    """``iteration_update`` of a MONAI ``SupervisedTrainer``: one SimCLR step on two views.

    The trainer's ``network`` maps a batch of views to projections, its ``loss_function``
    compares the two batches of projections (``monai.losses.ContrastiveLoss``).
    """

    def __call__(self, engine: Any, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # engine: MONAI's SupervisedTrainer (network, optimizer, loss_function, amp, state.device)
        first, second = (torch.as_tensor(batch[k]).to(engine.state.device, non_blocking=True) for k in VIEW_KEYS)
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=engine.state.device.type, dtype=torch.bfloat16, enabled=engine.amp):
            projections = engine.network(torch.cat([first, second]))
        z1, z2 = projections.float().chunk(2)
        loss = engine.loss_function(z1, z2)
        loss.backward()
        engine.optimizer.step()
        return {"loss": loss.detach()}
