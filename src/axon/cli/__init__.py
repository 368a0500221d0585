"""The ``axon`` command line. Each command parses options, calls one library function and
renders its result; nothing here moves bytes or reads config itself."""
