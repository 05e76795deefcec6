"""Deploy the bundle's networks on a running Ray cluster: ``python -m monai_app.serve --address HOST:PORT``.

Starts Serve's HTTP proxy (``--http-host``, ``--http-port``) if it is not running, deploys the
application ``--name`` (route prefix ``/<name>``) with ``--replicas`` replicas, waits until
it answers and exits; the application lives on in the cluster (``serve shutdown`` or
``ray stop`` ends it). A Serve config file (``serve deploy``, KubeRay) names
``monai_app.serve.deployment:app_builder`` instead
(docs/scale_out.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import urllib.request

from monai_app.serve.deployment import ServeSettings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m monai_app.serve", description=__doc__.split("\n")[0])
    parser.add_argument("--address", default="auto", help="the Ray cluster (ray start --head's address; default: auto)")
    parser.add_argument("--bundle", required=True, help="the bundle folder, as the replicas' machines see it")
    parser.add_argument("--name", default="cxr", help="application name and route prefix (node: inference.serve_application)")
    parser.add_argument("--http-host", default="127.0.0.1", help="where Serve's HTTP proxy listens (0.0.0.0 for other machines)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--replicas", type=int, default=1, help="replicas (the minimum with --max-replicas)")
    parser.add_argument("--max-replicas", type=int, default=0, help="autoscale up to this many replicas (0: fixed)")
    parser.add_argument("--num-cpus", type=float, default=1.0, help="Ray CPUs per replica")
    parser.add_argument("--num-gpus", type=float, default=0.0, help="Ray GPUs per replica (e.g. 0.5: two replicas a GPU)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--runtime", default="auto", choices=("auto", "pytorch", "onnxruntime", "openvino"))
    parser.add_argument("--num-threads", type=int, default=0, help="torch / runtime threads per replica (0: default)")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-wait-ms", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the application to answer")
    return parser


def main(argv: list[str] | None = None) -> int:
    import ray
    from ray import serve

    from monai_app.serve.deployment import build_app

    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = ServeSettings(
        bundle=args.bundle, name=args.name, replicas=args.replicas, max_replicas=args.max_replicas, num_cpus=args.num_cpus, num_gpus=args.num_gpus,
        device=args.device, runtime=args.runtime, num_threads=args.num_threads, max_batch_size=args.max_batch_size,
        batch_wait_timeout_s=args.batch_wait_ms / 1000,
    )
    ray.init(address=args.address, log_to_driver=False)
    serve.start(http_options={"host": args.http_host, "port": args.http_port})
    serve.run(build_app(settings), name=args.name, route_prefix=f"/{args.name}", blocking=False)
    url = f"http://{args.http_host if args.http_host != '0.0.0.0' else '127.0.0.1'}:{args.http_port}/{args.name}/identity"
    deadline = time.monotonic() + args.timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                identity = json.load(answer)
            break
        except OSError as exc:
            if time.monotonic() > deadline:
                print(f"serve: {url} did not answer within {args.timeout:g} s: {exc}", file=sys.stderr)
                return 1
            time.sleep(0.5)
    # One line the scripts and tests wait for, with what the replicas serve.
    print(f"serving: {url.removesuffix('/identity')} replicas={args.replicas} " + json.dumps(identity), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
