"""What every stage shares: the work folder's layout and files, atomic writes, locks, worker pools, limits.

- :mod:`svfnet.common.workdir`: the work folder (``read_prepared``, ``subject_ids``, ``REGIONS``).
- :mod:`svfnet.common.atomic`: files written so that nothing half-written has its final name.
- :mod:`svfnet.common.staging`: a stage's outputs built aside, then moved in at once.
- :mod:`svfnet.common.locks`: one writer per work folder (``svfnet.lock``).
- :mod:`svfnet.common.parallel`: worker processes (``run_tasks``) that stop cleanly on Ctrl-C.
- :mod:`svfnet.common.limits`: memory, disk and float16 range checks made before work starts.

Submodules load on first use.
"""
