"""Stage 5, learning: the SVF-Net model, its losses, augmentation, and the training loop.

- :mod:`svfnet.training.model`: ``SVFNet``, ``SVFNetConfig``, checkpoints (``read_checkpoint``,
  ``load_model``).
- :mod:`svfnet.training.losses`: the paper's SVF loss and the label-overlap loss.
- :mod:`svfnet.training.consistency`: the inverse-consistency term (``inverse_consistency_weight``).
- :mod:`svfnet.training.augment`: shifts, rotations, intensity and deformation augmentation.
- :mod:`svfnet.training.train`: ``run_training(workdir, config)`` (``svfnet train``), resumable.

Submodules load on first use.
"""
