"""The search filters as query parameters, shared by /api/search and /api/scenes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query


def search_filters(
    folder: Annotated[list[str], Query(description="only images under this folder "
                                       "(repeat for several)")] = [],  # noqa: B006 - FastAPI reads it
    after: Annotated[str | None, Query(max_length=10, description="taken on or after: 2021, 2021-07, "
                                       "2021-07-04 (EXIF)")] = None,
    before: Annotated[str | None, Query(max_length=10, description="taken before (EXIF)")] = None,
    camera: Annotated[str | None, Query(max_length=80, description="camera make or model contains")] = None,
    min_width: Annotated[int | None, Query(ge=0, le=1_000_000)] = None,
    min_height: Annotated[int | None, Query(ge=0, le=1_000_000)] = None,
    tag: Annotated[list[str], Query(description="has this tag (repeat: all)")] = [],  # noqa: B006
    geotagged: Annotated[bool | None, Query(description="true: only photos with GPS in EXIF; "
                                            "false: only photos without")] = None,
) -> Any:
    """A :class:`~cbir.store.photometa.Filters`, or None when no filter is given."""
    from cbir.store.photometa import Filters

    if len(folder) > 20 or len(tag) > 20:
        from cbir.errors import InvalidRequest

        raise InvalidRequest("at most 20 folders and 20 tags per search")
    f = Filters(folder=folder, after=after, before=before, camera=camera, min_width=min_width,
                min_height=min_height, tags=tag, gps=geotagged)  # False: not geotagged
    return f if f.active else None
