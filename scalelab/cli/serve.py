"""`scalelab serve`: the OpenAI-compatible API and the web chat page for a run's model.

    scalelab serve --run runs/demo                        # then open http://127.0.0.1:8000
    scalelab serve --run runs/demo --stage base --port 0  # any free port: the one taken is printed
    SCALELAB_API_KEY=secret scalelab serve --run runs/demo --host 0.0.0.0 --allowed-host box.lan --protect-all

Then, with the official client:  OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="secret" or "none").
"""

from __future__ import annotations

from scalelab.common import UsageError
from scalelab.config import parse_config
from scalelab.serve.config import LOOPBACK_HOSTS, ServeConfig

WEB_PACKAGES = ("fastapi", "uvicorn", "httptools", "starlette", "pydantic", "anyio")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(ServeConfig, argv, prog="scalelab serve")
    cfg.check()
    try:
        from scalelab.serve.app import build_app
        from scalelab.serve.server import ServeServer
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in WEB_PACKAGES:
            raise
        raise UsageError(f"the server needs the '{e.name}' package, which is not installed: pip install "
                         f"{e.name} (or reinstall scalelab, which depends on it)") from None

    app = build_app(cfg)
    served = app.state.served
    on_cpu = next(served.engine.model.parameters()).device.type == "cpu"
    if on_cpu and served.engine.stats()["decoder"] == "torch":
        from scalelab.lm.inference import cpu_kernels

        print(f"note: decoding with torch alone, slower on CPU than scalelab's kernels (the README's figures) "
              f"({cpu_kernels.why_unavailable() or 'not used for this dtype'})", flush=True)
    if cfg.host not in LOOPBACK_HOSTS and not served.api_key:
        print(f"warning: listening on {cfg.host} without an API key: anyone who can reach this port can use the "
              "model (set --api-key or SCALELAB_API_KEY)", flush=True)
    if cfg.host in ("0.0.0.0", "::") and not cfg.allowed_host:
        print("note: answering requests addressed to localhost or an IP address only; add --allowed-host NAME for "
              "each host name clients use (a guard against DNS rebinding)", flush=True)

    def announce(url: str) -> None:
        print(f"serving '{served.model_id}' (context {served.context_length} tokens) on {url}  "
              f"(chat page at /, API at /v1)", flush=True)

    ServeServer(app, cfg, on_started=announce).run()
    return 0
