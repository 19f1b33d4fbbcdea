"""`scalelab serve`: the OpenAI-compatible API and the web chat page for a run's model.

    scalelab serve --run runs/demo                        # then open http://127.0.0.1:8000
    scalelab serve --run runs/demo --stage base --port 8001
    SCALELAB_API_KEY=secret scalelab serve --run runs/demo --host 0.0.0.0 --cors-origin http://localhost:3000

Then, with the official client:  OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="secret" or "none").
"""

from __future__ import annotations

from scalelab.config import parse_config
from scalelab.serve.app import LOOPBACK_HOSTS, ServeConfig


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(ServeConfig, argv, prog="scalelab serve")
    cfg.check()
    import uvicorn

    from scalelab.serve.app import build_app

    app = build_app(cfg)
    served = app.state.served
    shown = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    print(f"serving '{served.model_id}' (context {served.context_length} tokens) on http://{shown}:{cfg.port}  "
          f"(chat page at /, API at /v1)", flush=True)
    on_cpu = next(served.engine.model.parameters()).device.type == "cpu"
    if on_cpu and served.engine.stats()["decoder"] == "torch":
        from scalelab.lm.inference import cpu_kernels

        print(f"note: decoding with torch alone, 1.3-2x slower on CPU than scalelab's kernels "
              f"({cpu_kernels.why_unavailable() or 'not used for this dtype'})", flush=True)
    if cfg.host not in LOOPBACK_HOSTS and not served.api_key:
        print(f"warning: listening on {cfg.host} without an API key: anyone who can reach this port can use the "
              "model (set --api-key or SCALELAB_API_KEY)", flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level, timeout_graceful_shutdown=5)
    return 0
