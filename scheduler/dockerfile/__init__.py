"""The Dockerfile frontend: parser -> instructions -> build graph, each stage importing only
the one before it."""

__all__: list[str] = []
