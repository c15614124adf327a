"""Building and launching the app with the right access rules."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import gradio as gr
from PIL import Image

from ..choices import DEFAULT_TRAINING_RUNNER
from ..paths import sample_data_dir
from .access import MAX_UPLOAD_FILE_BYTES, DataRoots, expire_uploads, generate_password, parse_auth
from .app import PAGE_CSS, AppConfig, allowed_paths, build_app, page_head
from .served import expire_served
from .session import SessionRegistry, uploads_root


def make_app(folder: Path | None, *, share: bool = False, data_roots: list[str] | None = None, restrict_folders: bool | None = None,
             training_runner: str = DEFAULT_TRAINING_RUNNER):
    """The app's Blocks. Folder loading is limited to the data roots when `restrict_folders`
    (default: in share mode); the roots default to `folder` and sample_data/. Training runs
    go to `training_runner` (see training/runners.py)."""
    roots = data_roots or [p for p in (folder, sample_data_dir()) if p is not None]
    restricted = share if restrict_folders is None else restrict_folders
    config = AppConfig(folder=folder, data_roots=DataRoots.of(roots, restricted=restricted), sessions=SessionRegistry(training_runner))
    demo = build_app(config)
    blocks_close = demo.close

    def close(*args, **kwargs):  # the app's standby training process ends with it
        config.sessions.close()
        return blocks_close(*args, **kwargs)

    demo.close = close
    return demo


def launch_app(*, folder: Path | None, host: str = "127.0.0.1", port: int = 7860, share: bool = False, auth: str | None = None, data_roots: list[str] | None = None, open_browser: bool = True, block: bool = True, restrict_folders: bool | None = None, max_file_size: int = MAX_UPLOAD_FILE_BYTES,
               training_runner: str = DEFAULT_TRAINING_RUNNER):
    """Start the app (a login is generated in share mode when `auth` is None); returns the
    running Blocks. `block=False` returns at once (tests, benchmarks). `max_file_size`:
    Gradio refuses a bigger uploaded file (HTTP 413) while it streams in."""
    credentials = parse_auth(auth) if auth else None
    if share and credentials is None:
        credentials = ("user", generate_password())
        print(f"Share mode needs a login. user: {credentials[0]}  password: {credentials[1]}", file=sys.stderr, flush=True)
    # Pillow's DecompressionBombWarning names no file and would go raw to the console for
    # every big image: the scan lists big images itself, and queries above 40 MP are refused.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    # Left by earlier runs: unpacked uploads and served folders older than a day.
    expire_uploads(uploads_root())
    expire_served()
    demo = make_app(folder, share=share, data_roots=data_roots, restrict_folders=restrict_folders, training_runner=training_runner)
    demo.queue(default_concurrency_limit=4)
    # quiet: Gradio's banner would tell users to "set `share=True` in `launch()`"; the app
    # prints its own lines below, naming its own --share option.
    kwargs = dict(server_name=host, server_port=port, auth=credentials, allowed_paths=allowed_paths(), inbrowser=open_browser, run_history=False, head=page_head(), css=PAGE_CSS, prevent_thread_lock=True, show_error=True, quiet=True, max_file_size=max_file_size)
    try:
        demo = _launch_local_or_shared(demo, share, kwargs)
    except Exception as exc:
        if not share:
            raise
        # Offline (or the share service refused): keep the local app working.
        print(f"Could not create a share link ({type(exc).__name__}: {exc}); running locally only.", file=sys.stderr, flush=True)
        demo.close()
        demo = make_app(folder, share=True, data_roots=data_roots, restrict_folders=restrict_folders, training_runner=training_runner)
        demo.queue(default_concurrency_limit=4)
        demo.launch(share=False, **kwargs)
    _print_addresses(demo, share)
    if block:
        demo.block_thread()
    return demo


LOCAL_CHECK_TRIES = 3  # Gradio's check that the page answers gives up after one 3 s request


def _launch_local_or_shared(demo, share: bool, kwargs: dict):
    """`demo.launch`; when Gradio's check that the local page answers fails (a single
    request with a 3 s timeout: a machine busy with other work can miss it), the server
    is closed and started again, up to `LOCAL_CHECK_TRIES` times."""
    for attempt in range(1, LOCAL_CHECK_TRIES + 1):
        try:
            demo.launch(share=share, **kwargs)
            return demo
        except ValueError as exc:
            if share or "localhost is not accessible" not in str(exc) or attempt == LOCAL_CHECK_TRIES:
                raise
            print(f"The local page did not answer in time (attempt {attempt}); starting the server again.", file=sys.stderr, flush=True)
            gr.Blocks.close(demo)  # the server only: `make_app`'s close would also end the app's standby training process
    return demo


def _print_addresses(demo, share: bool) -> None:
    print(f"retrieval-app is running at {demo.local_url}", flush=True)
    if getattr(demo, "share_url", None):
        print(f"Public link (login required): {demo.share_url}", flush=True)
    elif share:
        # Gradio reports a failed share link and goes on serving locally; say so plainly.
        print(f"No public share link could be made (offline?). The app runs locally at {demo.local_url} "
              "with the same login and folder limits.", file=sys.stderr, flush=True)
    else:
        print("For a public link with a login, start it with `retrieval-app --share`.", flush=True)


__all__ = ["launch_app", "make_app"]
