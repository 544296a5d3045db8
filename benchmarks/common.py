"""Measure processes and print tables: the helpers every benchmark in this folder shares.

Standard library only (plus :class:`RawPoster`, a bare asyncio HTTP/1.1 client), so that a
benchmark's child process pays for nothing it does not measure.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import resource
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: The repository root, so that a benchmark run as a script can import the provider from the checkout.
ROOT = Path(__file__).resolve().parents[1]


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to the hard limit and return it.

    Every held long poll is a socket on each side, so N triggers need N descriptors here.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def proc_status_kib(pid: int | str, field: str) -> int:
    """Return a ``kB`` field of /proc/<pid>/status, such as ``VmRSS`` or ``VmHWM``, in KiB.

    :param pid: the process, or ``"self"``.
    :param field: the field name.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Restart this process's peak-RSS (``VmHWM``) tracking from the current RSS.

    Writing 5 to ``/proc/self/clear_refs`` does that on Linux 4.0 and later.

    :return: whether the kernel accepted it (if not, ``VmHWM`` counts from process start).
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def cpu_seconds(pid: int | str) -> float:
    """Return the user plus system CPU time a process has used, from /proc/<pid>/stat.

    :param pid: the process, or ``"self"``.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    """Return the 1, 5 and 15 minute load averages as text."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def machine() -> dict[str, Any]:
    """Describe this machine: CPU model and count, memory, kernel, Python, load average."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_gib = meminfo_kib("MemTotal") / 1024 / 1024
    except (OSError, KeyError):
        mem_gib = 0.0
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_gib, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average": load_average(),
        "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
    }


def meminfo_kib(field: str) -> int:
    """Return a field of /proc/meminfo in KiB.

    :param field: e.g. ``MemTotal``.
    """
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def percentile(values: Sequence[float], q: float) -> float:
    """Return the q-th percentile (0..100) by nearest rank.

    :param values: the sample, not empty.
    :param q: the percentile.
    """
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Return p50, p99 and max of a sample (zeros when it is empty).

    :param values: the sample.
    """
    if not values:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0}
    return {"p50": statistics.median(values), "p99": percentile(values, 99), "max": max(values)}


def fmt_seconds(seconds: float) -> str:
    """Format a duration with a unit that keeps it short: µs, ms or s.

    :param seconds: the duration.
    """
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.0f} ms"
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"


def fmt_ratio(value: float, base: float) -> str:
    """Format ``value / base`` as ``Nx`` (or ``-`` when the base is zero).

    :param value: the measured figure.
    :param base: the baseline figure.
    """
    if not base:
        return "-"
    ratio = value / base
    return f"{ratio:.3g}x"


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]], notes: Sequence[str] = ()) -> None:
    """Print a GitHub-flavoured Markdown table, so the output pastes into a README as it is.

    :param title: printed above the table.
    :param header: column titles.
    :param rows: cells, already formatted.
    :param notes: lines printed under the table.
    """
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    print(f"\n### {title}\n", flush=True)
    print("| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    for note in notes:
        print(f"\n{note}")
    print(flush=True)


class RawPoster:
    """Send requests over bare asyncio streams: HTTP/1.1 keep-alive, O(1) work per request.

    httpcore's pool rescans every connection on each request and response
    (quadratic in the number of open connections: encode/httpx#3215,
    encode/httpcore#1035), so with thousands of connections a single
    ``httpx.AsyncClient`` measures itself. This client measures the server, and
    sets up benchmarks (starting thousands of calls) cheaply.

    :param host: server address.
    :param port: server port.
    """

    def __init__(self, host: str, port: int) -> None:
        self.name = "raw"
        self._host = host
        self._port = port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a JSON body on an idle or new connection and return the JSON reply.

        :param path: ``start/v4/`` or ``check/v4/``.
        :param body: the request body.
        :raises RuntimeError: on a status other than 200.
        """
        conn = self._idle.pop() if self._idle else await asyncio.open_connection(self._host, self._port)
        reader, writer = conn
        try:
            data = json.dumps(body).encode()
            writer.write(
                b"POST /%s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                % (path.encode(), self._host.encode(), len(data))
                + data
            )
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            if status_line.split()[1] != "200":
                raise RuntimeError(f"HTTP error: {status_line}")
            headers = dict(line.split(":", 1) for line in header_lines if ":" in line)
            length = int(next(v for k, v in headers.items() if k.lower() == "content-length"))
            reply: dict[str, Any] = json.loads(await reader.readexactly(length))
        except BaseException:
            writer.close()
            raise
        self._idle.append(conn)
        return reply

    async def aclose(self) -> None:
        """Close every idle connection."""
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


async def start_sleep_calls(host: str, port: int, untils: Sequence[float], concurrency: int = 64) -> list[str]:
    """Start one ``sleep`` call per entry of ``untils`` (``startOnly``) and return their call ids.

    :param host: server address.
    :param port: server port.
    :param untils: for each call, the Unix time at which it finishes.
    :param concurrency: Starts in flight at once.
    """
    poster = RawPoster(host, port)
    semaphore = asyncio.Semaphore(concurrency)

    async def one(until: float) -> str:
        async with semaphore:
            reply = await poster.post(
                "start/v4/",
                {"apiKey": "bench", "modelKey": "sleep", "startOnly": True, "modelInputs": {"until": until}},
            )
        call_id = reply.get("callID")
        if not isinstance(call_id, str) or not call_id.startswith("call_"):
            raise RuntimeError(f"Start failed: {reply}")
        return call_id

    try:
        return await asyncio.gather(*(one(until) for until in untils))
    finally:
        await poster.aclose()
