"""Schedule search, split by concept (as TVM's meta_schedule names them):

* ``space``    the candidate schedules, generated from the op itself (layouts, vector tiles, window
               orders, Rfactor pieces), starting from the default schedule (``schedule.default``);
* ``measure``  timing, verification against the default's output, the machine's gemm ceiling;
* ``search``   ``tc.tune``: the search over the space within a budget, and its result;
* ``database`` the tuning database (sqlite), keyed by the canonical op (``canon``) and signature;
* ``precompile`` compile workers that build a batch of candidates ahead of their timing;
* ``gpu``      the same for the CUDA target; ``hot``: profile a program, tune its hottest ops;
  ``background``: the same in a worker process while the program goes on.

This package imports nothing on its own: ``from tensorcomp.autotune.search import tune``.
"""
