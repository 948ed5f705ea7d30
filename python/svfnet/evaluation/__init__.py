"""Stage 6, evaluation on the test pairs: SVF-Net against LCC Log-Demons and the other peers.

- :mod:`svfnet.evaluation.metrics`: Dice, Hausdorff distances, LCC, log-Jacobian spread per region
  (``evaluate_pair``).
- :mod:`svfnet.evaluation.evaluate`: ``run_evaluation(workdir)`` (``svfnet evaluate``): the methods, the
  records, the tables and statistics.
- :mod:`svfnet.evaluation.report`: the HTML report and its figures.

Submodules load on first use.
"""
