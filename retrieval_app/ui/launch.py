"""Building and launching the app with the right access rules."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import RetrievalAppError
from ..paths import sample_data_dir
from .access import DataRoots, generate_password, parse_auth
from .app import AppConfig, allowed_paths, build_app, page_head


def make_app(folder: Path | None, *, share: bool = False, data_roots: list[str] | None = None):
    roots = data_roots or [p for p in (folder, sample_data_dir()) if p is not None]
    config = AppConfig(folder=folder, data_roots=DataRoots.of(roots, restricted=share))
    return build_app(config)


def launch_app(*, folder: Path | None, host: str = "127.0.0.1", port: int = 7860, share: bool = False, auth: str | None = None, data_roots: list[str] | None = None, open_browser: bool = True, block: bool = True):
    credentials = parse_auth(auth) if auth else None
    if share and credentials is None:
        credentials = ("user", generate_password())
        print(f"Share mode needs a login. user: {credentials[0]}  password: {credentials[1]}", file=sys.stderr, flush=True)
    demo = make_app(folder, share=share, data_roots=data_roots)
    demo.queue(default_concurrency_limit=4)
    kwargs = dict(server_name=host, server_port=port, auth=credentials, allowed_paths=allowed_paths(), inbrowser=open_browser, run_history=False, head=page_head(), prevent_thread_lock=not block, show_error=True)
    try:
        demo.launch(share=share, **kwargs)
    except Exception as exc:
        if not share:
            raise
        # Offline (or the share service refused): keep the local app working.
        print(f"Could not create a share link ({type(exc).__name__}: {exc}); running locally only.", file=sys.stderr, flush=True)
        demo.close()
        demo = make_app(folder, share=True, data_roots=data_roots)
        demo.queue(default_concurrency_limit=4)
        demo.launch(share=False, **kwargs)
    return demo


__all__ = ["launch_app", "make_app", "RetrievalAppError"]
