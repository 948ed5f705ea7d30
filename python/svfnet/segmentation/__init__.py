"""Multi-atlas segmentation of a new image from the labelled subjects of a work folder (docs/segment.md).

- :mod:`svfnet.segmentation.multi_atlas`: ``segment`` (``svfnet segment``): preparation of the image
  without labels, atlas registration with SVF-Net, fusion, outputs in the image's original geometry.
- :mod:`svfnet.segmentation.atlases`: the atlases of a work folder and how they are chosen.
- :mod:`svfnet.segmentation.fusion`: majority and locally weighted votes, normalised entropy.

Submodules load on first use.
"""
