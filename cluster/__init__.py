"""How builds enter and leave dockyard: the command line, client, endpoint and
coordinator."""

__all__: list[str] = []
