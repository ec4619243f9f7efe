"""LitServe with its batching, serving a package's full network: ``POST /predict`` with a
multipart form whose field ``files`` is one encoded image, answering ``{"class_index": N}``.

    .peers/litserve/bin/python -m benchmarks.peers.litserve_server --package packages/default --port 8200

LitServe's endpoint reads a JSON body or a form (``python-multipart``), not a raw image body: a
form upload is its way to send an image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import litserve as ls

from benchmarks.peers.full_network import FullNetwork, peer_parser


class FullNetworkAPI(ls.LitAPI):  # type: ignore[misc]
    def __init__(self, package: Path, threads: int, graphs: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.package, self.threads, self.graphs = package, threads, graphs

    def setup(self, device: str) -> None:
        self.net = FullNetwork(self.package, self.threads, self.graphs)

    # No annotation on ``request``: LitServe then reads the body as a form (multipart) or JSON.
    def decode_request(self, request) -> bytes:  # type: ignore[no-untyped-def]
        return bytes(request["files"].file.read())

    def batch(self, inputs: list[bytes]) -> list[bytes]:
        return inputs

    def predict(self, x: list[bytes]) -> list[int]:
        return self.net.classify(x)

    def unbatch(self, output: list[int]) -> list[int]:
        return output

    def encode_response(self, output: int) -> dict[str, int]:
        return {"class_index": output}


def main() -> None:
    p = peer_parser(__doc__ or "", 8200)
    p.add_argument("--batch-timeout-s", type=float, default=0.001, help="wait for a fuller batch")
    args = p.parse_args()
    api = FullNetworkAPI(
        args.package, args.threads, args.graphs, max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout_s,
    )  # fmt: skip
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.instances)
    print(f"litserve serving on http://127.0.0.1:{args.port}", flush=True)
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
