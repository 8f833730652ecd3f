"""Run the real ServerApp logic and ClientApp in one process, without Ray or a SuperLink.

:class:`InProcessGrid` is a ``flwr.serverapp.Grid`` that delivers each message to the real ClientApp
(``client_app(message, context)``), with one persistent ``Context`` per simulated hospital, exactly like the
simulation runtime does (node config ``partition-id``/``num-partitions``, or custom node configs such as a
``data-dir``). Every message and reply is deep-copied on the way, as serialization would, and kept in
:attr:`InProcessGrid.sent` / :attr:`InProcessGrid.received` so tests can audit what crossed the "network".

Used by the fast tests and by ``benchmarks/federated.py``. ``flwr run`` remains the way to run the app.

Note: creating a ``Message`` outside a Flower runtime needs the task identity that the runtime normally sets;
:func:`_set_task_identity` sets it through ``flwr.supercore.task_identity`` (private in flwr 1.41/1.42).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid


def _set_task_identity(node_id: int = 0) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id = 1
    TaskIdentity.task_id = 1
    TaskIdentity.node_id = node_id


class InProcessGrid(Grid):
    """A Grid whose nodes are ClientApp calls in this process."""

    def __init__(self, client_app: Any, num_nodes: int, run_config: Mapping[str, Any] | None = None,
                 node_configs: Sequence[Mapping[str, Any]] | None = None, run_id: int = 1) -> None:
        if node_configs is not None and len(node_configs) != num_nodes:
            raise ValueError("give one node config per node")
        self.client_app = client_app
        self.run_config = dict(run_config or {})
        self.nodes = list(range(101, 101 + num_nodes))
        self.contexts = {}
        for i, nid in enumerate(self.nodes):
            nc = dict(node_configs[i]) if node_configs is not None else {"partition-id": i, "num-partitions": num_nodes}
            self.contexts[nid] = Context(run_id=run_id, node_id=nid, node_config=nc, state=RecordDict(),
                                         run_config=dict(self.run_config))
        self.sent: list[Message] = []
        self.received: list[Message] = []
        self._run = None
        _set_task_identity(0)

    # Grid API ---------------------------------------------------------------------------------
    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id,
                       ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("InProcessGrid only supports send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("InProcessGrid only supports send_and_receive")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for m in messages:
            dst = m.metadata.dst_node_id
            if dst not in self.contexts:
                raise ValueError(f"unknown node {dst}")
            _set_task_identity(0)
            delivered = Message(content=copy.deepcopy(m.content), dst_node_id=dst,
                                message_type=m.metadata.message_type)
            self.sent.append(delivered)
            reply = self.client_app(delivered, self.contexts[dst])
            reply = copy.deepcopy(reply)
            self.received.append(reply)
            replies.append(reply)
        _set_task_identity(0)
        return replies


def run_inprocess(run_config: Mapping[str, Any], num_nodes: int,
                  node_configs: Sequence[Mapping[str, Any]] | None = None) -> tuple[dict, InProcessGrid]:
    """Run :func:`server.federation.run_federation` with the real ClientApp on ``num_nodes`` in-process nodes."""
    from clients.client_app import app as client_app
    from server.federation import run_federation

    grid = InProcessGrid(client_app, num_nodes, run_config, node_configs)
    summary = run_federation(grid, run_config, run_id=1)
    return summary, grid
