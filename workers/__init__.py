"""dockyard's workers: everything that executes on a node (runc, snapshots, layers,
registry, exporters).  Workers never parse a Dockerfile."""

__all__: list[str] = []
