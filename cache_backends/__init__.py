"""Content-addressed cache backends: blobs by digest and cache records by key."""

__all__: list[str] = []
