"""Executors: where the trials of a run execute, each a backend of one protocol (:mod:`htx.executors.base`).

``serial`` (the default) runs them in the driver process (:mod:`htx.executors.serial`); ``local`` in a pool
of worker processes on this machine (:mod:`htx.executors.local`); ``ray`` as Ray tasks on a local or remote
cluster (:mod:`htx.executors.ray_backend`, optional dependency ``htx[ray]``). The parallel ones ship chunks
of :class:`~htx.grid.TrialSpec` plus the validated config to workers (:mod:`htx.executors.plan`), workers
rebuild the run once and stream records back (:mod:`htx.executors.worker`), and the driver alone writes the
store (:mod:`htx.executors.driver`).
"""
