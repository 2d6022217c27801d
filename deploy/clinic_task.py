"""One ClientApp message in a forked clinic task: Flower's Runtime API calls, the clinic's app.

This is what Flower's ``flwr-clientapp`` process does (``run_clientapp``), with Flower's
own client, heartbeats, message (de)serialisation and push functions, and two differences
that matter to a clinic:

* The ClientApp run is the one installed at the clinic (``oralfed.client.app``), imported
  once by the runtime's template. Flower's process installs the coordinator's app bundle
  and runs whatever ClientApp its ``pyproject.toml`` names: a coordinator could ship code
  of its own to run beside the clinic's records. Here the bundle is never installed or
  imported; only the messages come from the coordinator.
* The message's objects are pulled with a short retry. Flower's SuperNode creates the task
  *before* it has pulled the message's arrays from the SuperLink, and ``run_clientapp``
  waits 1 s, then 2 s, then 4 s between attempts: a task started at once (which a warm
  runtime does) waits out those seconds for arrays that arrive in tens of milliseconds.

Everything else follows ``run_clientapp``: an exception in the app becomes an error reply
(Flower's ``ClientApp raised an exception``), the final context and status are pushed, and
the process ends. A task process that dies outright is Flower's to report: its token
expires and the SuperNode replies with an error.
"""

from __future__ import annotations

from logging import ERROR
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.app.error import Error
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode, SubStatus
from flwr.common.serde import context_from_proto
from flwr.proto.node_pb2 import Node
from flwr.proto.runtime_pb2 import (
    PullAppMessagesRequest,
    PullTaskInputRequest,
)
from flwr.supercore import log
from flwr.supercore.app_utils import start_parent_process_monitor
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.inflatable.inflatable_protobuf_utils import (
    make_confirm_message_received_fn_protobuf,
    make_pull_object_fn_protobuf,
)
from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

__all__ = ["OBJECT_RETRY_CAP_SECONDS", "OBJECT_RETRY_SECONDS", "run_clinic_task"]

OBJECT_RETRY_SECONDS = 0.02  # first wait for an array the SuperNode is still pulling
OBJECT_RETRY_CAP_SECONDS = 0.5


def run_clinic_task(app: ClientApp, request: dict[str, Any]) -> None:
    """Serve the one message of the task whose token ``request`` carries; the task ends if
    the runtime that launched it does (``parent_pid``)."""
    if request["parent_pid"] is not None:
        start_parent_process_monitor(request["parent_pid"])
    retry_invoker = make_simple_http_retry_invoker()
    certificates = request["root_certificates_path"]
    client = RuntimeHttpClient.from_server_address(
        server_address=request["runtime_api_address"],
        insecure=request["insecure"],
        root_certificates=Path(certificates).read_bytes() if certificates else None,
        interceptors=[
            RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
            RuntimeTokenHttpInterceptor(request["token"]),
        ],
        retry_invoker=retry_invoker,
    )
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    message: Message | None = None
    context: Context | None = None
    reply: Message | None = None
    sub_status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
    try:
        heartbeat.start()
        message, context = _pull_message(client)
        reply = app(message=message, context=context)
        sub_status, details = SubStatus.COMPLETED, ""
    except Exception as error:
        log(ERROR, "ClientApp raised an exception", exc_info=error)
        details = f"{type(error)}:<'{error}'>"
        if message is not None:
            reply = Message(
                Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details),
                reply_to=message,
            )
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
        finally:
            retry_invoker.max_tries = 1  # as Flower's exit handler: never block on the way out
            push_task_output(client=client, context=context, sub_status=sub_status, details=details)
            if heartbeat.is_running:
                heartbeat.stop()
            client.close()


def _pull_message(client: RuntimeHttpClient) -> tuple[Message, Context]:
    """Flower's ``pull_task_input`` without the run's bundle and with a short retry."""
    task_input = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id = task_input.task_id  # what Flower's logging and tracing read
    TaskIdentity.run_id = task_input.run.run_id
    TaskIdentity.node_id = task_input.context.node_id
    context = context_from_proto(task_input.context)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("No messages received from Runtime API")
    node = Node(node_id=context.node_id)
    tree = pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree,
        make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(
            client.ConfirmMessageReceived, node, context.run_id
        ),
        return_type=Message,
        initial_backoff=OBJECT_RETRY_SECONDS,
        backoff_cap=OBJECT_RETRY_CAP_SECONDS,
    )
    message.metadata.__dict__["_message_id"] = tree.object_id  # as Flower sets it
    return message, context
