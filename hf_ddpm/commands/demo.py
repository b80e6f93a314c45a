"""`hf-ddpm demo`: serve the demo page (hf_ddpm/demo.py) of a saved pipeline folder or a Hub repo in the browser.

Gradio is the optional extra (`pip install "hf-ddpm[demo]"`); without it the command stops with one line saying so,
before anything is loaded. The page is served on 127.0.0.1 (this machine only) unless --host says otherwise.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
from dataclasses import dataclass

from ..artifacts import check_pipeline_path
from ..options import SWITCH, UsageError, check_device, option
from . import Command

HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                      r"[A-Za-z0-9])?)*$")


def check_pipeline(pipeline) -> None:
    check_pipeline_path(os.fspath(pipeline))


def check_host(host: str) -> None:
    """An IP address or a host name (checked by its spelling: no name lookup)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not HOSTNAME.match(host):
            raise UsageError(f"--host {host!r} is not an IP address or host name", "--host",
                             "pass 127.0.0.1 (this machine only) or 0.0.0.0 (every network interface)") from None


@dataclass
class DemoConfig:
    """What `hf-ddpm demo` does."""

    pipeline: str = option(help="saved pipeline folder, or a Hub repo id USER/NAME (downloaded, or from the cache)",
                           positional=True, metavar="PIPELINE_OR_REPO", check=check_pipeline)
    host: str = option("127.0.0.1", "address to serve the page on: 127.0.0.1 is this machine only; 0.0.0.0 every "
                       "network interface (anyone who can reach this machine can use it)", check=check_host)
    port: int | None = option(None, "port to serve on (default: the first free one from 7860, or GRADIO_SERVER_PORT)",
                              range="[1, 65535]")
    device: str | None = option(None, "cpu, cuda, cuda:N, mps ... (default: cuda when available)", check=check_device)
    share: bool = option(False, "also serve the page through a temporary public gradio.live link (needs the "
                                "network; anyone with the link can use it)", free=SWITCH)
    max_images: int = option(16, "the most images one click of Sample makes", range="[1, 64]")
    stop_after: float | None = option(None, "stop serving after this many seconds (default: run until Ctrl+C)",
                                      range="(0, inf)")

    def validate(self) -> None:
        """Before anything is loaded: gradio is installed and the port is free."""
        from ..demo import require_gradio

        require_gradio()
        if self.port is not None:
            check_port_free(self.host, self.port)


def check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise UsageError(f"port {port} on {host} is in use", "--port",
                                 "pass another --port, or leave it out for a free one") from None
            raise UsageError(f"cannot serve on {host}:{port} ({error.strerror or error})", "--host",
                             "pass an address of this machine, such as 127.0.0.1") from None


def run(config: DemoConfig) -> int:
    from ..demo import build_demo, serve

    demo = build_demo(config.pipeline, device=config.device, max_images=config.max_images)
    serve(demo, host=config.host, port=config.port, share=config.share, stop_after=config.stop_after)
    return 0


COMMAND = Command(
    "demo", "serve a demo page in the browser: sample with a progress bar, progressive x0, interpolation, eval numbers",
    run=run, config=DemoConfig,
    description="Serve the demo page of a saved pipeline folder or Hub repo (needs gradio: pip install "
                "\"hf-ddpm[demo]\"): sample with any scheduler and step count with a live progress bar, watch the x0 "
                "predictions along the chain (paper Fig. 6), interpolate between two uploaded images at a chosen t "
                "(Sec. 4.4), and read the model card's evaluation numbers. Serves on 127.0.0.1 unless --host says "
                "otherwise; Ctrl+C stops it.",
)
