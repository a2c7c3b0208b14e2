"""Gradients by transposing index expressions (installed as ``tensorcomp.autodiff``).

Not implemented yet: ``tc.grad`` is tracked as its own piece of work.
"""
