"""The HTTP layer: the Starlette app, its routes, and the one mapping of errors to statuses.

Everything below it (:mod:`mlos_core.core`, :mod:`mlos_core.storage`) knows nothing of HTTP.
"""
