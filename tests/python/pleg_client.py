"""A grpcio client of pleg's gRPC API, for the interoperability tests.

It generates the Python code for ``proto/pleg/v1/pleg.proto`` with
grpcio-tools into a temporary directory at start-up (nothing generated is
committed), then opens a channel to ``unix:<socket>`` with no options at
all: grpcio then sends its own default ``:authority``, derived from the
socket's path, which is what the daemon must accept.

Usage (from the project-local venv, see scripts/python-env.sh):

    python pleg_client.py --proto-dir proto --socket PATH health
    python pleg_client.py --proto-dir proto --socket PATH list-pods [--namespace NS]
    python pleg_client.py --proto-dir proto --socket PATH watch [--namespace NS] \
        [--epoch E --since N] [--initial-state] [--include-container-changed] [--count K]
    python pleg_client.py --proto-dir proto --socket PATH wait-for \
        --namespace NS --name NAME (--running CONTAINER | --all-exited | --gone) \
        --timeout-ms N
    python pleg_client.py --proto-dir proto --socket PATH monitor \
        [--namespace-regex R] [--name-regex R] [--selector S] --timeout-ms N

Each answer is printed as one JSON object per line (the proto field names,
enums by name, int64 as strings: protobuf's JSON mapping). ``watch`` first
prints ``{"ready": true}`` once the daemon accepted the call (the response
headers arrived: from then on events are queued for it), then one line per
``Event`` until the stream ends or the process is killed. Its ready line also
carries the ``pleg-epoch`` and ``pleg-seq`` response headers (``epoch``,
``seq``); ``--epoch``/``--since`` resume after that point, ``--initial-state``
asks for the current state first, and ``--count K`` cancels the call after K
items (a client that disconnects). ``monitor`` does
the same with its ``MonitorUpdate`` messages (progress, then the report) and
ends with the stream; ``wait-for`` prints its ``WaitForResponse``. A failed call
prints ``{"error": CODE, "details": ...}`` and exits 1.
"""

import argparse
import json
import os
import sys
import tempfile


def generate(proto_dir, out_dir):
    """Compiles pleg.proto into out_dir and makes it importable."""
    from grpc_tools import protoc

    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            os.path.join(proto_dir, "pleg", "v1", "pleg.proto"),
        ]
    )
    if status != 0:
        sys.exit(f"protoc failed on {proto_dir}/pleg/v1/pleg.proto (exit {status})")
    sys.path.insert(0, out_dir)


def emit(obj):
    print(json.dumps(obj, sort_keys=True), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proto-dir", required=True)
    parser.add_argument("--socket", required=True)
    parser.add_argument(
        "command", choices=["health", "list-pods", "watch", "wait-for", "monitor"]
    )
    parser.add_argument("--namespace", default="")
    parser.add_argument("--name", default="")
    parser.add_argument("--namespace-regex", default="")
    parser.add_argument("--name-regex", default="")
    parser.add_argument("--selector", default="")
    until = parser.add_mutually_exclusive_group()
    until.add_argument("--running", metavar="CONTAINER")
    until.add_argument("--all-exited", action="store_true")
    until.add_argument("--gone", action="store_true")
    parser.add_argument("--timeout-ms", type=int, default=30000)
    parser.add_argument("--epoch", default="")
    parser.add_argument("--since", type=int, default=0)
    parser.add_argument("--initial-state", action="store_true")
    parser.add_argument("--include-container-changed", action="store_true")
    parser.add_argument("--count", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pleg-py-") as out_dir:
        generate(args.proto_dir, out_dir)
        import grpc
        from google.protobuf import json_format
        from pleg.v1 import pleg_pb2, pleg_pb2_grpc

        def as_dict(message):
            return json_format.MessageToDict(
                message, preserving_proto_field_name=True
            )

        # No options: grpcio's own default authority for a unix socket.
        with grpc.insecure_channel(f"unix:{os.path.abspath(args.socket)}") as channel:
            stub = pleg_pb2_grpc.PlegStub(channel)
            try:
                if args.command == "health":
                    emit(as_dict(stub.Health(pleg_pb2.HealthRequest(), timeout=10)))
                elif args.command == "list-pods":
                    request = pleg_pb2.ListPodsRequest(namespace=args.namespace)
                    emit(as_dict(stub.ListPods(request, timeout=10)))
                elif args.command == "wait-for":
                    pods = pleg_pb2.PodSelection(
                        namespace=args.namespace, name=args.name
                    )
                    if args.running:
                        request = pleg_pb2.WaitForRequest(
                            pods=pods, running_container=args.running
                        )
                    elif args.all_exited:
                        request = pleg_pb2.WaitForRequest(pods=pods, all_exited=True)
                    elif args.gone:
                        request = pleg_pb2.WaitForRequest(pods=pods, gone=True)
                    else:
                        sys.exit("wait-for needs --running, --all-exited or --gone")
                    request.timeout_ms = args.timeout_ms
                    # The call's own deadline leaves the daemon time to answer
                    # "not met" at the wait's timeout.
                    deadline = args.timeout_ms / 1000 + 30
                    emit(as_dict(stub.WaitFor(request, timeout=deadline)))
                elif args.command == "monitor":
                    pods = pleg_pb2.PodSelection(
                        namespace_regex=args.namespace_regex,
                        name_regex=args.name_regex,
                        selector=args.selector,
                    )
                    request = pleg_pb2.MonitorRequest(
                        pods=pods, timeout_ms=args.timeout_ms
                    )
                    call = stub.Monitor(request, timeout=args.timeout_ms / 1000 + 30)
                    call.initial_metadata()
                    emit({"ready": True})
                    for update in call:
                        emit(as_dict(update))
                else:
                    request = pleg_pb2.WatchRequest(
                        namespace=args.namespace,
                        epoch=args.epoch,
                        since=args.since,
                        initial_state=args.initial_state,
                        include_container_changed=args.include_container_changed,
                    )
                    call = stub.Watch(request)
                    headers = dict(call.initial_metadata())
                    emit(
                        {
                            "ready": True,
                            "epoch": headers.get("pleg-epoch", ""),
                            "seq": headers.get("pleg-seq", ""),
                        }
                    )
                    seen = 0
                    for event in call:
                        emit(as_dict(event))
                        seen += 1
                        if args.count and seen >= args.count:
                            call.cancel()
                            break
            except grpc.RpcError as e:
                emit({"error": e.code().name, "details": e.details()})
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
