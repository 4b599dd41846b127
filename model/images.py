"""Image references as baseline keys: `nginx` -> `docker.io/library/nginx:latest`.

Why a module of its own: the window store and the daemon's engine need the key of an image on
every window, and nothing else of the model. Living in model/baseline.py put scikit-learn (and
the ~195 MiB it imports) in every process that named an image; here it is stdlib only.
`model.baseline` re-exports these names, so older imports keep working.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[0-9a-fA-F]{32,}$")
_IMAGE_ID_RE = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True)
class ImageRef:
    registry: str
    repository: str
    tag: str
    digest: str

    def key(self, grouping: str = "tag") -> str:
        """The baseline key. grouping: `tag` (registry/repo:tag, default), `repository` (ignore tags),
        `digest` (registry/repo@digest when the digest is known, else the tag form)."""
        base = f"{self.registry}/{self.repository}"
        if grouping == "repository":
            return base
        if grouping == "digest":
            return f"{base}@{self.digest}" if self.digest else f"{base}:{self.tag}"
        if grouping != "tag":
            raise ValueError(f"unknown grouping {grouping!r} (tag, repository, digest)")
        return f"{base}:{self.tag}"


def parse_image(image: str, image_id: str = "") -> ImageRef:
    """Split an image reference the way container runtimes do.

    `nginx` -> docker.io/library/nginx:latest; `localhost/webapp:1.4` keeps its registry; a
    `@sha256:...` suffix or an `image_id` that looks like a digest fills `digest`.
    """
    ref = (image or "").strip()
    digest = ""
    if "@" in ref:
        ref, digest = ref.split("@", 1)
    first, _, rest = ref.partition("/")
    if rest and ("." in first or ":" in first or first.lower() == "localhost"):
        registry, path = first, rest
    else:
        registry, path = "docker.io", ref
    tag = "latest"
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, tag = path.rsplit(":", 1)
    if registry == "docker.io" and "/" not in path and path:
        path = f"library/{path}"
    if not digest and image_id:
        iid = image_id.strip()
        if _DIGEST_RE.match(iid):
            digest = iid
        elif _IMAGE_ID_RE.fullmatch(iid):
            digest = f"sha256:{iid.lower()}"
    return ImageRef(registry=registry.lower(), repository=(path or "unknown").lower(), tag=tag,
                    digest=digest.lower())


@lru_cache(maxsize=65536)
def normalise_image(image: str, image_id: str = "", grouping: str = "tag") -> str:
    """Baseline key of an image reference (see ImageRef.key for `grouping`)."""
    return parse_image(image, image_id).key(grouping)
