"""The paper's study as an application: what ``freezeout train``, ``sweep``, ``demo`` and ``plot`` run.

``config`` (one typed dataclass), ``models`` and ``data`` (registries), ``engine`` (one run's moving parts and
its hot loop), ``launch`` (one process or torchrun's N, behind one interface), ``trainer`` (a run, its files
and resume), ``runfiles`` (atomic writes), ``lock`` (one process per run folder), ``sweep``/``plan``/
``aggregate``/``plot`` (the grid of runs, its cost before and its table and figures after) and ``demo``. The
library core never imports this package.
"""
