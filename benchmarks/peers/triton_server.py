"""Triton Inference Server (PyTriton's bundled tritonserver) with its dynamic batcher, serving a
package's full network: KServe v2 ``POST /v2/models/<name>/infer`` with one ``BYTES`` input
``image`` (an encoded image) and one ``INT64`` output ``class_index``.

    .peers/triton/bin/python -m benchmarks.peers.triton_server --package packages/default --port 8100

Triton listens on ``--port`` (HTTP), ``--port + 1`` (gRPC) and ``--port + 2`` (metrics). Needs
a virtual environment made with Debian's own python3 (``make peers``): with another build of
Python 3.11 its Python-backend stub does not start.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from benchmarks.peers.full_network import FullNetwork, peer_parser


def main() -> None:
    p = peer_parser(__doc__ or "", 8100, "HTTP; gRPC and metrics take the next two")
    p.add_argument("--max-delay-us", type=int, default=1000, help="dynamic batcher queue delay")
    args = p.parse_args()
    nets = [FullNetwork(args.package, args.threads, args.graphs) for _ in range(args.instances)]
    net = nets[0]

    def infer_with(net: FullNetwork) -> Callable[..., dict[str, np.ndarray]]:
        @batch
        def infer(image: np.ndarray) -> dict[str, np.ndarray]:
            # image: [B, 1] of encoded images (bytes)
            classes = net.classify([bytes(row[0]) for row in image])
            return {"class_index": np.array(classes, dtype=np.int64).reshape(-1, 1)}

        return infer

    config = TritonConfig(
        http_address="127.0.0.1", http_port=args.port, grpc_address="127.0.0.1",
        grpc_port=args.port + 1, metrics_port=args.port + 2, log_verbose=0,
    )  # fmt: skip
    with Triton(config=config) as triton:
        triton.bind(
            model_name=net.name,
            infer_func=[infer_with(n) for n in nets],  # one per model instance
            inputs=[Tensor(name="image", dtype=np.bytes_, shape=(1,))],
            outputs=[Tensor(name="class_index", dtype=np.int64, shape=(1,))],
            config=ModelConfig(
                max_batch_size=args.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_delay_us),
            ),
            strict=True,
        )
        print(f"triton serving {net.name} on http://127.0.0.1:{args.port}", flush=True)
        triton.serve()


if __name__ == "__main__":
    main()
