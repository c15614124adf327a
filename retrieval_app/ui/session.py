"""One browser session's state: the loaded folder, its gallery and map, the model in
use and a training job. Each session owns one of these (held in `gr.State`); nothing is
shared between sessions except the on-disk caches, which are safe to share."""

from __future__ import annotations

import secrets
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..choices import DEFAULT_TRAINING_RUNNER
from ..data import ScanResult, scan_folder
from ..data.labels_csv import open_folder
from ..errors import RetrievalAppError
from ..paths import cache_dir, models_dir
from ..retrieval import Gallery, Neighbour, Projection, compute_projection
from ..retrieval.map_job import MapJob
from ..thumbnails import ensure_thumbnails
from ..training import JobSnapshot, TrainConfig, TrainingJob, checkpoint_distance, load_embedder
from ..training.checkpoint import checkpoint_dial, is_head_only, set_checkpoint_blend
from ..training.dial import Dial
from ..training.runners import standby_worker, training_job
from ..training.standby import StandbyWorker
from ..training.live_map import LiveMap
from .access import DataRoots
from .live_map import LiveMapView
from .query_input import read_query_image, uploaded_path
from .served import ServedFiles

Progress = Callable[[float, str], None]
THUMB_WORKERS = 4  # threads making a gallery's missing thumbnails (decoding releases the GIL)


@dataclass
class SessionState:
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    scan: ScanResult | None = None
    gallery: Gallery | None = None
    projection: Projection | None = None
    # Thumbnails made and served so far, by gallery index: made when the page shows them
    # (gallery results, a hovered point), never all at load.
    thumbs: dict[int, Path | None] = field(default_factory=dict)
    # Names this session in the page's hover requests (see `SessionRegistry`): 128 random bits.
    page_token: str = field(default_factory=lambda: secrets.token_hex(16))
    model_spec: str = "efficientnet_lite0"
    method: str = "umap"
    job: TrainingJob | None = None
    job_consumed: bool = False
    training_runner: str = DEFAULT_TRAINING_RUNNER  # where runs go: see training/runners.py
    standby: StandbyWorker | None = None  # the app's training process started ahead of time (process runner)
    # The specialise <-> generalise dial of the latest quick-mode run (or of a model picked
    # in the Models section), the model it belongs to (None: the run kept the backbone and
    # saved nothing) and that run's settings (to train again at another point).
    dial: Dial | None = None
    dial_model: Path | None = None
    dial_config: TrainConfig | None = None
    query_point: np.ndarray | None = None  # map position of a dropped query
    highlight: tuple[int | None, list[int]] = (None, [])
    last_query: int | np.ndarray | None = None  # a point index or a dropped image's embedding
    served: ServedFiles = field(default_factory=ServedFiles)  # the thumbnails this session's page may fetch
    map_seq: int = 0  # numbers every map and highlight sent: the page draws the latest
    labels_file: str | None = None  # the labels CSV the loaded folder was read with (training reads it too)
    map_job: MapJob | None = None  # the requested map, fitted in the background (begin_map)
    live_map: LiveMapView = field(default_factory=LiveMapView)  # what the page shows of a run's live map
    _thumbs_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # ------------------------------------------------------------ loading
    def load(self, folder: Path, model_spec: str, progress: Progress, roots: DataRoots | None = None, labels: str | None = None) -> None:
        """Scan `folder` and embed it with `model_spec` (cached); resets the map and query.
        With share mode's `roots`, images resolving outside them are skipped. `labels`:
        a labels CSV (id,label) for a folder that is not sorted into class folders."""
        progress(0.0, "scanning folder")
        scan = open_folder(folder, labels=labels)
        if roots is not None:
            scan = roots.keep_inside(scan)
        self._use(scan, model_spec, progress)
        self.labels_file = labels

    def switch_model(self, model_spec: str, progress: Progress) -> None:
        """The loaded folder's images (the same scan, so share mode's root check stands)
        under another model, e.g. the one a training run just kept. A head trained in quick
        mode is applied to the backbone features cached by training: no image is decoded."""
        if self.scan is None:
            raise RetrievalAppError("load a folder first")
        self._use(self.scan, model_spec, progress)

    def _use(self, scan: ScanResult, model_spec: str, progress: Progress) -> None:
        progress(0.02, f"loading model {model_spec}")
        net = load_embedder(model_spec)
        gallery = Gallery.build(scan, net, distance=checkpoint_distance(model_spec), from_features=is_head_only(model_spec), progress=_embedding_progress(progress))
        with self._thumbs_lock:
            self.served.renew()
            self.scan, self.gallery, self.thumbs, self.model_spec = scan, gallery, {}, model_spec
        self.projection, self.query_point, self.highlight, self.last_query = None, None, (None, []), None
        self.map_job = None

    def project(self, method: str) -> Projection:
        """The 2-D map by `method` (cached on disk by the core), computed now."""
        self.method, self.map_job = method, None  # a map still fitting in the background is not wanted now
        return self._use_projection(compute_projection(self.require_gallery().embeddings, method))

    def begin_map(self, method: str) -> MapJob:
        """Show a map at once (the requested one when cached, else PCA) and fit the
        requested one in the background; `settle_map` swaps it in when it is ready."""
        self.method = method
        job = MapJob.start(self.require_gallery().embeddings, method)
        self.map_job = job
        self._use_projection(job.current)
        return job

    def settle_map(self, job: MapJob, timeout: float = 0.0) -> str:
        """Wait up to `timeout` s for `job`: "pending", "ready" (its map is now in use) or
        "superseded" (another load or map was asked for since: nothing changes). A failed
        fit raises; the first map stays."""
        if not job.wait(timeout):
            return "pending" if self.map_job is job else "superseded"
        if self.map_job is not job:
            return "superseded"
        if self.projection is not job.result:
            self._use_projection(job.result)
        return "ready"

    def quick_projection(self) -> Projection:
        """PCA: instant, shown while UMAP / t-SNE are computed."""
        return self._use_projection(compute_projection(self.require_gallery().embeddings, "pca"))

    def _use_projection(self, projection: Projection) -> Projection:
        self.projection = projection
        if isinstance(self.last_query, np.ndarray):  # a dropped query moves with the new map
            self.query_point = projection.transform(self.last_query)[0]
        return projection

    def require_gallery(self) -> Gallery:
        """The loaded gallery, or a user-facing error when nothing is loaded yet."""
        if self.gallery is None:
            raise RetrievalAppError("load a folder first")
        return self.gallery

    def next_seq(self) -> int:
        self.map_seq += 1
        return self.map_seq

    # ------------------------------------------------------------ queries
    def neighbours_of_point(self, index, k: int) -> list[Neighbour]:
        """Neighbours of gallery point `index` (validated here: it comes from the browser)."""
        gallery = self.require_gallery()
        try:
            index = int(index)
        except (TypeError, ValueError):
            raise RetrievalAppError(f"not a point index: {index!r}") from None
        neighbours = gallery.neighbours_of_index(index, k)
        self.highlight, self.query_point, self.last_query = (index, [n.index for n in neighbours]), None, index
        return neighbours

    def neighbours_of_image(self, upload, k: int) -> list[Neighbour]:
        """Neighbours of an uploaded image (the raw upload, or a path) that is not
        (necessarily) in the gallery. Decoded by the app's decoder at the network's working
        size; a file that cannot be used clears the previous query and raises."""
        gallery = self.require_gallery()
        try:
            path, name = uploaded_path(upload)
            image = read_query_image(path, name, _decode_max_side(gallery.net))
            vector = gallery.embed_images([image])
        except Exception:
            self.clear_query()  # the old star and rings would answer a question not asked
            raise
        return self.neighbours_of_vector(vector, k)

    def clear_query(self) -> None:
        """Forget the last query and its highlight on the map."""
        self.highlight, self.query_point, self.last_query = (None, []), None, None

    def neighbours_of_vector(self, vector: np.ndarray, k: int) -> list[Neighbour]:
        """Neighbours of an embedding; the query is placed on the current map."""
        neighbours = self.require_gallery().neighbours_of_vectors(vector, k)[0]
        self.highlight, self.last_query = (None, [n.index for n in neighbours]), vector
        self.query_point = self.projection.transform(vector)[0] if self.projection is not None else None
        return neighbours

    def repeat_query(self, k: int) -> list[Neighbour] | None:
        """The last query again with a new k (None when nothing was asked yet)."""
        if self.last_query is None:
            return None
        if isinstance(self.last_query, np.ndarray):
            return self.neighbours_of_vector(self.last_query, k)
        return self.neighbours_of_point(self.last_query, k)

    def thumbnails(self, indices: Sequence[int]) -> list[Path | None]:
        """The served thumbnails of gallery images `indices`, made now where missing (None
        where an image cannot be decoded, or the index is not a gallery image). Called
        from events and from the page's hover requests, possibly at the same time."""
        with self._thumbs_lock:
            gallery, thumbs = self.gallery, self.thumbs
            n = len(gallery) if gallery is not None else 0
            missing = sorted({int(i) for i in indices if 0 <= int(i) < n and int(i) not in thumbs})
        if missing:
            made = ensure_thumbnails([gallery.records[i] for i in missing], workers=min(THUMB_WORKERS, len(missing)))
            with self._thumbs_lock:
                if self.gallery is gallery:  # not replaced by another load meanwhile
                    for i, path in zip(missing, made):
                        # Named by index and content: a file of an older gallery is never taken for it.
                        thumbs[i] = self.served.add(path, f"{i}-{path.name}") if path is not None else None
        with self._thumbs_lock:
            return [thumbs.get(int(i)) for i in indices]

    def thumb(self, index: int) -> Path | None:
        """The served thumbnail of gallery image `index` (None when it could not be made)."""
        return self.thumbnails([index])[0]

    # ----------------------------------------------------------- training
    def start_training(self, **settings) -> TrainingJob:
        """Start a background `TrainingJob` on the loaded folder; one per session at a time."""
        gallery = self.require_gallery()
        # Default name: folder and start time, so a second run never overwrites the first.
        name = settings.pop("name", None) or f"{gallery.root.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        config = TrainConfig(folder=str(gallery.root), out_dir=str(models_dir() / _safe_name(name)), labels=self.labels_file, **settings)
        return self._start(config)

    def _start(self, config: TrainConfig) -> TrainingJob:
        if self.job is not None and self.job.running:
            raise RetrievalAppError("a training run is already going; cancel it first")
        self.job = training_job(config, self.training_runner, callbacks=[LiveMap()], standby=self.standby).start()  # its frames: the panel's live map
        self.job_consumed = False
        return self.job

    def prepare_training(self) -> None:
        """The user is about to train: start the app's standby training process now
        (importing torch takes seconds) unless one waits already or a run is going."""
        if self.standby is not None and not (self.job is not None and self.job.running):
            self.standby.warm()

    def take_outcome(self, snap: JobSnapshot) -> Path | None:
        """Once per finished run: remember its dial, and say which model to switch to (the
        folder of the model it saved), or None when nothing was saved (cancelled, failed,
        or the backbone was kept): then the run is settled here and nothing switches."""
        if self.job_consumed or not snap.finished:
            return None
        result = snap.result
        if result is not None and (result.dial is not None or result.model_path is not None):
            self.dial = result.dial
            self.dial_model = result.out_dir if result.model_path is not None else None
            self.dial_config = self.job.config if self.job is not None else None
        if result is None or result.model_path is None:
            self.job_consumed = True
            return None
        return result.out_dir

    def show_dial_of(self, model_spec: str) -> Dial | None:
        """The dial of a saved quick-mode model (picked in the Models section), if it has one."""
        dial = checkpoint_dial(model_spec)
        if dial is not None:
            self.dial, self.dial_model, self.dial_config = dial, Path(model_spec), None
        return dial

    def keep_dial_point(self, blend: float, progress: Progress) -> TrainingJob | None:
        """Keep the dial's point at `blend`. A saved model gets that blend (its checkpoint
        is rewritten) and the map and search switch to it. When the run kept the backbone
        (nothing saved), a new run starts with the same settings and this blend, so the
        user can specialise anyway; it is returned."""
        if self.dial is None:
            raise RetrievalAppError("no dial yet: it comes with a quick-mode training run")
        if not 0.0 <= blend <= 1.0:
            raise RetrievalAppError(f"blend must be between 0 and 1, not {blend}")
        if self.dial_model is None:
            if self.dial_config is None:
                raise RetrievalAppError("nothing was saved and the run's settings are gone: start a new run")
            return self._start(replace(self.dial_config, blend=float(blend)))
        payload = set_checkpoint_blend(self.dial_model, float(blend))
        if isinstance(payload.get("dial"), dict):
            self.dial = Dial.from_dict(payload["dial"])
        self.switch_model(str(self.dial_model), progress)
        return None


class SessionRegistry:
    """The app's sessions by `page_token`, for the page's hover requests (they come through
    a component's server function, outside Gradio's events and their `gr.State`). Held
    weakly: a session Gradio has dropped is gone from here too. One per app."""

    def __init__(self, training_runner: str = DEFAULT_TRAINING_RUNNER) -> None:
        self.training_runner = training_runner  # given to every new session
        # One training process started ahead of time for the whole app (process runner).
        self.standby = standby_worker(training_runner)
        self._sessions: weakref.WeakValueDictionary[str, SessionState] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def new(self) -> SessionState:
        state = SessionState(training_runner=self.training_runner, standby=self.standby)
        with self._lock:
            self._sessions[state.page_token] = state
        return state

    def close(self) -> None:
        """The app closes: its standby training process ends."""
        if self.standby is not None:
            self.standby.close()

    def get(self, token) -> SessionState | None:
        if not isinstance(token, str):
            return None
        with self._lock:
            return self._sessions.get(token)


def _embedding_progress(progress: Progress) -> Callable[[int, int], None]:
    """The load's progress bar while images are embedded: "embedding: done/total images,
    about N s left" (the speed from the images computed now, not those from the cache)."""
    from ..training.progress import PassProgress

    counter = PassProgress("embedding", lambda text: None)

    def report(done: int, total: int) -> None:
        counter(done, total)  # its first call's rows came from the cache: not in the speed
        progress(0.05 + 0.75 * done / max(total, 1), counter.text(done, total))

    return report


def _decode_max_side(net) -> int | None:
    # The network's decoding size (about twice its input): JPEGs decode DCT-downscaled to it.
    return getattr(getattr(net, "spec", None), "decode_max_side", None)


def _safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_" else "-" for c in name.strip())[:60].strip("-")
    if not cleaned:
        raise RetrievalAppError("model name must contain letters or digits")
    return cleaned


def uploads_root() -> Path:
    """Where uploads are unpacked: `uploads/<session>/<upload>/` (never served over HTTP)."""
    return cache_dir() / "uploads"


def uploads_dir(session_id: str) -> Path:
    """A fresh folder for one upload, inside this session's part of the app cache."""
    return uploads_root() / session_id / uuid.uuid4().hex[:8]

