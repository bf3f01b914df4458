"""The paper's study as an application: what ``freezeout train``, ``sweep``, ``demo`` and ``plot`` run.

``config`` (one typed dataclass), ``models`` and ``data`` (registries), ``engine`` (one run's moving parts and
its hot loop), ``launch`` (one process or torchrun's N, behind one interface), ``trainer`` (a run's checks, its
folder and resume) with ``session`` (its epochs and files) and ``recover`` (what a resume repairs),
``progress`` (the bar, its schedule-aware ETA, the epoch lines), ``runfiles`` (atomic writes), ``lock`` (one
process per run folder), ``folders`` (one kind of run per folder), ``sweep``/``plan``/``aggregate``/``plot``
(the grid of runs, its cost before and its table and figures after) and ``demo`` (baseline and FreezeOut in
lockstep). The library core never imports this package.
"""
