"""Schedule search and the tuning database.

Not implemented yet: ops run with the default schedule from
``tensorcomp.schedule``.
"""
