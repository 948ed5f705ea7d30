"""Multi-atlas segmentation of a new image from the labelled subjects of a work folder (docs/segment.md).

- :mod:`svfnet.segmentation.multi_atlas`: ``segment`` (``svfnet segment``): preparation of the image
  without labels, the steps below, outputs in the image's original geometry.
- :mod:`svfnet.segmentation.atlases`: the atlases of a work folder and how they are chosen.
- :mod:`svfnet.segmentation.atlas_registration`: every atlas registered with SVF-Net, labels warped.
- :mod:`svfnet.segmentation.refinement`: each atlas's SVF refined by LCC Log-Demons (``--refine``).
- :mod:`svfnet.segmentation.fusion`: majority and locally weighted votes, normalised entropy.
- :mod:`svfnet.segmentation.evaluation`: ``svfnet evaluate --segmentation`` on the test subjects, with
  :mod:`~svfnet.segmentation.scores` (Dice, Hausdorff, calibration) and
  :mod:`~svfnet.segmentation.evaluation_report` (its section of the report).

Submodules load on first use.
"""
