"""The file behind a MODEL.WEIGHTS address: where Detectron2's download cache keeps its copy,
fetching it through Detectron2's PathManager, and one clear error when neither is possible."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from urllib.parse import urlparse

from detectron2.utils.file_io import Detectron2Handler, PathManager
from iopath.common.file_io import get_cache_dir


class WeightsUnavailableError(FileNotFoundError):
    """MODEL.WEIGHTS that is neither a local file nor downloadable (offline, or no such
    address); names the address, the download cache path and the offline fix."""


def weights_cache_path(url: str) -> str | None:
    """Where Detectron2's PathManager keeps a downloaded copy of ``url`` and looks for it
    before downloading: ``$FVCORE_CACHE`` (default ``~/.torch/iopath_cache``) + the address's
    path, as iopath's ``HTTPURLHandler`` lays it out (``detectron2://`` addresses are Detectron2's
    store, https://dl.fbaipublicfiles.com/detectron2/). None for addresses it does not download
    (local paths, other schemes)."""
    url = _download_url(url)
    if not url.startswith(("http://", "https://", "ftp://")):
        return None
    folder = os.path.dirname(urlparse(url).path.lstrip("/"))
    return os.path.join(get_cache_dir(), folder, url.split("/")[-1])


def _download_url(url: str) -> str:
    if url.startswith(Detectron2Handler.PREFIX):
        return Detectron2Handler.S3_DETECTRON2_PREFIX + url[len(Detectron2Handler.PREFIX) :]
    return url


def fetch_weights(url: str) -> str:
    """The local file of a ``MODEL.WEIGHTS`` value: the path itself, the copy in Detectron2's
    download cache, or a download into it through Detectron2's PathManager.

    Raises:
        WeightsUnavailableError: a missing local file, or an address that cannot be downloaded
            (unreachable, or no file there) with no copy in the cache; the message names the
            address, the cache path and the offline fix.
    """
    if os.path.isfile(url):
        return url
    if "://" not in url:
        raise WeightsUnavailableError(f"MODEL.WEIGHTS: weights file not found: {url}")
    cached = weights_cache_path(url)
    if cached is None:  # another scheme: its PathManager handler fetches it
        try:
            return PathManager.get_local_path(url)
        except (OSError, ValueError, AssertionError) as error:
            raise WeightsUnavailableError(_unavailable(url, None, _reason(error))) from None
    if os.path.isfile(cached):
        return cached
    # Asked first: a failed download would print a progress bar and a log line of its own.
    problem = _unreachable(_download_url(url))
    if problem is not None:
        raise WeightsUnavailableError(_unavailable(url, cached, problem))
    try:
        # force: into this cache, even where this process once downloaded it to another.
        path = PathManager.get_local_path(url, force=True)
    except (OSError, ValueError, AssertionError) as error:  # urllib's and iopath's
        raise WeightsUnavailableError(_unavailable(url, cached, _reason(error))) from None
    if not os.path.isfile(path):
        raise WeightsUnavailableError(_unavailable(url, cached, "nothing was downloaded"))
    return path


def _unreachable(url: str, timeout: float = 30.0) -> str | None:
    """Why ``url`` cannot be downloaded (no network, no such host, no file there), or None when
    the server answers that it has it (or answers otherwise: the download then says)."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError as error:
        # S3 (Detectron2's store) answers 403 for a file that is not there.
        return f"HTTP {error.code} {error.reason}" if error.code in (403, 404, 410) else None
    except (urllib.error.URLError, OSError, ValueError) as error:
        return _reason(error)
    return None


def _reason(error: BaseException) -> str:
    reason = getattr(error, "reason", None) or error
    return " ".join(str(reason).split()) or type(error).__name__


def _unavailable(url: str, cached: str | None, problem: str) -> str:
    address = url if _download_url(url) == url else f"{url} ({_download_url(url)})"
    name = url.rsplit("/", 1)[-1]
    if cached is None:
        return (
            f"MODEL.WEIGHTS {address} cannot be read ({problem}); give a local copy instead: "
            f"MODEL.WEIGHTS /path/to/{name}"
        )
    if problem.startswith("HTTP 4"):
        return (
            f"MODEL.WEIGHTS {address} does not exist ({problem}; the download cache has no copy "
            f"at {cached}): check the address (docs/configs.md lists the published weights), or "
            f"give a local file: MODEL.WEIGHTS /path/to/{name}"
        )
    return (
        f"MODEL.WEIGHTS {address} cannot be downloaded ({problem}) and the download cache has "
        f"no copy at {cached}. Offline, download it where there is internet and put it at that "
        f"path (FVCORE_CACHE sets the cache folder), or give a local copy: MODEL.WEIGHTS "
        f"/path/to/{name}"
    )
