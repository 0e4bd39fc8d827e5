"""The functional core: one module per score, each a pure function on tensors.

Import the functions from :mod:`tguide.metrics`; this sub-package re-exports nothing, so
``import tguide.metrics.functional.hscore`` always gives the module.
"""
