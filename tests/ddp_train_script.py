"""Run by tests/test_train.py under torchrun: trains a few steps and saves each rank's weights."""

import os
import sys

import torch
import torch.distributed as dist

from svfnet.training.model import SVFNetConfig
from svfnet.training.train import run_training
from svfnet.training.train_config import TrainConfig

if __name__ == "__main__":
    workdir, out = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    config = TrainConfig(
        steps=4,
        batch_size=1,
        checkpoint_every=2,
        validate_every=4,
        validation_pairs=2,
        model=SVFNetConfig(widths=(4, 8, 8, 8), grid=(16, 16, 4), spacing_mm=(4.0, 4.0, 10.0)),
    )
    result = run_training(workdir, config, run="ddp", progress=False)
    torch.save(result.model.state_dict(), f"{out}/rank{dist.get_rank()}.pt")  # each rank's own replica
    dist.destroy_process_group()
    # Leave without the interpreter's teardown: 1 full suite in 5 here saw a rank abort
    # ("terminate called without an active exception", SIGABRT); the likely cause is gloo's threads at
    # interpreter finalization (pytorch/pytorch#179291), not proven: the log does not say where. The
    # test's assertion (identical replicas) is about training, which is over and saved by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
