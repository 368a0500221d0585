"""The server's ties to other systems: S3 storage it pulls models from, service discovery it
registers with. Only the command line wires them in; the core never imports them.
"""
