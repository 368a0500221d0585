"""mlos-core: a Python MLOS Core server that receives, stores and registers models.

Calls go down, never up::

    cli.py           command line: options, wiring (model sources, discovery), uvicorn
    http/            the Starlette app: routes, multipart parsing, errors -> statuses
    integrations/    S3 sync (a model source), service-discovery registration
    core.py          Core: the server's operations, independent of HTTP
    oneshot.py       a whole model received in one request, file by file
    tenants.py       who may write which namespaces
    storage/         blobs, version directories, registry, upload records, body receiving
    errors.py        the errors core and storage raise (machine codes, no HTTP statuses)

What lies where on disk: :mod:`modelpkg.layout`.
"""

__version__ = "0.1.0"
