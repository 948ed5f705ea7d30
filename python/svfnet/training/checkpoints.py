"""What a training run keeps in its folder besides the model: the checkpoint with every rank's
training state, ``log.csv`` (and TensorBoard), ``refused.csv``, and the configuration a resumed run
continues with."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import torch
import torch.distributed as dist

from svfnet.common.atomic import atomic_path
from svfnet.training.distributed import Dist
from svfnet.training.model import SVFNet, save_checkpoint
from svfnet.training.train_config import TrainConfig


def resumed_config(saved: TrainConfig, given: TrainConfig | None, step: int, path: Path) -> TrainConfig:
    """The configuration a resumed run continues with: the saved one, or ``given`` where it only
    asks for more steps. The grid and spacing come from the data, so they are not compared."""
    if given is None:
        return saved
    given = dataclasses.replace(
        given,
        model=dataclasses.replace(
            given.model,
            grid=saved.model.grid,
            spacing_mm=saved.model.spacing_mm,
            long_axis=saved.model.long_axis,
        ),
    )
    differing = [
        name for name, value in given.to_dict().items() if name != "steps" and value != saved.to_dict()[name]
    ]
    if differing:
        raise ValueError(
            f"run_training(): 'config' differs from the run being resumed ({path}) in {differing}; only 'steps' may change"
        )
    if given.steps < step:
        raise ValueError(
            f"run_training(): 'steps' = {given.steps} is below the {step} steps the run being resumed has done"
        )
    return given


def write_refused(path: Path, refused: list[tuple[str, str, str, str]]) -> None:
    """``refused.csv``: the pairs left out of this run (moving, fixed, purpose, reason)."""
    with atomic_path(path) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("moving", "fixed", "purpose", "reason"))
        writer.writerows(refused)


def write_checkpoint(
    path: Path, model: SVFNet, optimizer, step: int, rng, config: TrainConfig, where: Dist
) -> None:
    """``checkpoint.pt`` at ``step``: the model, the optimiser, every rank's sampling RNG (gathered from the
    processes of ``where``) and the torch RNG; written by the main process only."""
    state = json.dumps(rng.bit_generator.state)  # a string: loads under weights_only, any size of int
    states = [state]
    if where.world > 1:
        states = [None] * where.world
        dist.all_gather_object(states, state)
    if where.main:
        save_checkpoint(
            path,
            model,
            optimizer=optimizer.state_dict(),
            step=step,
            sampling_states=states,
            torch_rng=torch.get_rng_state(),
            train_config=config.to_dict(),
        )


class TrainingLog:
    """log.csv (rows up to the resumed step kept, later ones dropped) and optional TensorBoard."""

    COLUMNS = (
        "step",
        "loss",
        "val_loss",
        "val_dice",
        "identity_dice",
        "seconds",
        "error",
        "svf_loss",
        "overlap_loss",
        "consistency_loss",
    )

    def __init__(self, path: Path, resumed_step: int, tensorboard: bool) -> None:
        kept = []
        if path.is_file() and resumed_step:
            with path.open(newline="") as handle:
                kept = [row for row in csv.DictReader(handle) if int(row["step"]) <= resumed_step]
        with atomic_path(path) as temporary, temporary.open("w", newline="") as handle:
            csv_writer = csv.DictWriter(handle, self.COLUMNS)
            csv_writer.writeheader()
            csv_writer.writerows(kept)
        self.handle = path.open("a", newline="")
        self.csv = csv.DictWriter(self.handle, self.COLUMNS)
        self.board = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: events a killed run logged after its last checkpoint are dropped
            purge = resumed_step + 1 if resumed_step else None
            self.board = SummaryWriter(str(path.parent / "tensorboard"), purge_step=purge)

    def write(self, row: dict) -> None:
        self.csv.writerow({key: row.get(key, "") for key in self.COLUMNS})
        self.handle.flush()
        if self.board is not None:
            for key, value in row.items():
                if key not in ("step", "error"):
                    self.board.add_scalar(key, value, row["step"])

    def close(self) -> None:
        self.handle.close()
        if self.board is not None:
            self.board.close()
