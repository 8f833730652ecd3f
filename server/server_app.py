"""The Flower ServerApp (Message API): a thin shell around :func:`server.federation.run_federation`."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.federation import run_federation

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Federated few-shot adaptation of the codec's subset; everything is configured by the run config."""
    run_federation(grid, context.run_config, run_id=int(context.run_id))
