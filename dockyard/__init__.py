"""dockyard: a distributed container-image builder.

The four parts live in the repository's top-level folders and are installed here
(pyproject.toml's package-dir): ``dockyard.scheduler`` (the Dockerfile frontend and the
solver, no filesystem), ``dockyard.workers`` (execution), ``dockyard.cache_backends`` and
``dockyard.cluster`` (the CLI, the local service, the endpoint).  Nothing is imported here:
the console script's start-up pays only for what a command uses.
"""
