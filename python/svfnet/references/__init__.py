"""Stage 4, reference deformations: for every ordered pair of subjects, the template points give landmark
correspondences, the elastic body spline spreads them over the grid and the iterative logarithm turns the
displacement into a stationary velocity field (:mod:`svfnet.references.stage`: ``run_references``,
``ReferenceStore``; ``svfnet references``). See docs/pipeline.md.
"""
