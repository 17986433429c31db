"""Judge throughput against a local OpenAI-compatible server with a fixed injected latency.

    python bench/judge_throughput.py [--latency 0.2] [--requests 256] [--concurrency 1 8 64]

With ``latency`` per reply, ``c`` requests in flight can do at most c / latency
requests/s: the ratio of the measured rate to that bound shows how much the client
side (openai client, frame JPEG encoding, event loop) costs. Target: >= 0.9. The
server runs in its own process so it does not share the client's interpreter.

Also printed: CPU milliseconds per request in the client and in the server. Where the
rate falls short of the bound, these say whether the machine ran out of cores (client +
server CPU per request x rate near the core count) rather than the client waiting badly;
1000 / client ms is what one judge worker can drive against a remote endpoint.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import tempfile
import time


def serve(latency: float, q) -> None:
    from sama.testing.openai_server import FakeJudgeServer

    s = FakeJudgeServer(latency=latency)
    q.put(s.start())
    while True:
        time.sleep(3600)


async def run(base_url: str, concurrency: int, n: int, cache: str) -> tuple[float, float]:
    """(requests/s, client CPU seconds per request)."""
    from sama.judging import Judge, JudgeConfig, Secret
    from sama.testing.media import frames_array

    frames = {"source": frames_array(4, 96, 64, seed=1), "target": frames_array(4, 96, 64, seed=2)}
    cfg = JudgeConfig(
        backend="openai",
        model=f"bench-{concurrency}",
        base_url=base_url,
        concurrency=concurrency,
        timeout=30.0,
        max_side=96,
    )
    j = Judge(cfg, Secret("bench"), cache)
    await j.judge("warmup", "video_edit", "warm up", frames)  # connection set-up outside the timing
    t0, cpu0 = time.perf_counter(), time.process_time()
    outs = await asyncio.gather(*(j.judge(f"s{i}", "video_edit", f"edit {i}", frames) for i in range(n)))
    dt, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    await j.close()
    assert all(o.keep for o in outs), [o.error for o in outs if o.error][:3]
    return n / dt, cpu / n


def cpu_seconds(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--latency", type=float, default=0.2)
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    a = p.parse_args()
    q = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=serve, args=(a.latency, q), daemon=True)
    proc.start()
    base_url = q.get(timeout=60)
    print(f"latency {a.latency}s per reply; {a.requests} samples per run (video edit, 4+4 frames)")
    print(f"{'in flight':>9} {'req/s':>8} {'bound':>8} {'ratio':>6} {'client ms/req':>14} {'server ms/req':>14}")
    try:
        for c in a.concurrency:
            n = a.requests if c > 1 else max(8, min(a.requests, int(4 / a.latency)))  # keep the serial run short
            with tempfile.TemporaryDirectory() as cache:  # a fresh cache: every sample is a request
                server0 = cpu_seconds(proc.pid)
                rate, client_cpu = asyncio.run(run(base_url, c, n, cache))
                server_cpu = (cpu_seconds(proc.pid) - server0) / (n + 1)  # + the warm-up request
            bound = c / a.latency
            print(
                f"{c:>9} {rate:>8.1f} {bound:>8.1f} {rate / bound:>6.2f} {1000 * client_cpu:>14.2f} "
                f"{1000 * server_cpu:>14.2f}"
            )
    finally:
        proc.terminate()


if __name__ == "__main__":
    main()
