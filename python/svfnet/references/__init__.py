"""Stage 4, reference deformations: for every ordered pair of subjects, the template points give landmark
correspondences, the elastic body spline spreads them over the grid and the iterative logarithm turns the
displacement into a stationary velocity field (:mod:`svfnet.references.stage`: ``run_references``,
``svfnet references``); :mod:`svfnet.references.store` holds them (``ReferenceStore``, what training
reads), :mod:`svfnet.references.flows` the LDDMM flows the landmarks ride on. See docs/pipeline.md.
"""
