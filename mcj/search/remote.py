"""Latency measured on another machine: hardware-aware search from the cloud, timings from
the target device.

The target runs ``python -m mcj.latency_server --port P`` (it needs only jax and mcj). A
search with ``latency(remote='HOST:PORT')`` exports each candidate's compiled inference
forward with ``jax.export`` for the server's platform and sends the serialized program;
the server makes inputs of the program's shapes (zeros: latency does not depend on the
values), times it as the local evaluator does (``warmup`` calls, then ``runs`` timed calls
to ``block_until_ready``) and answers the median, IQR, every run and its device kind.

Protocol (HTTP, JSON answers): ``GET /info`` -> {platform, device}; ``POST /measure?warmup=
W&runs=R`` with the serialized program as the body -> {median_ms, iqr_ms, runs_ms, device}.
A request that fails (the server is down, restarting, or answers something that is not a
measurement) is retried ``retries`` times, ``backoff`` seconds apart; then the search stops
with one line naming the server, and rerunning it resumes once the server is back.
"""
import http.server
import json
import time
import urllib.error
import urllib.parse
import urllib.request

import jax
import jax.numpy as jnp
import numpy as np

from mcj.core.config import ConfigError
from mcj.search import latency

TIMEOUT = 300  # seconds for one measurement (compilation included)


class RemoteError(Exception):
  """The latency server could not be reached or gave no measurement."""


def parse_address(address: str) -> str:
  host, sep, port = str(address).rpartition(':')
  if not sep or not host or not port.isdigit():
    raise ConfigError(f"latency remote must be 'HOST:PORT', got {address!r}.")
  return f'http://{host}:{int(port)}'


def _request(url: str, data: bytes | None = None) -> dict:
  request = urllib.request.Request(url, data=data, method='POST' if data is not None else 'GET')
  with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
    answer = json.loads(response.read().decode())
  if not isinstance(answer, dict):
    raise ValueError('not a JSON object')
  return answer


class RemoteLatency:
  """The client side: ``measure(model, variables, image_shape, batch_size)``."""

  def __init__(self, address: str, *, retries: int = 3, backoff: float = 2.0):
    self.address, self.base = address, parse_address(address)
    self.retries, self.backoff = retries, backoff
    self._info = None

  def _call(self, path: str, data: bytes | None = None, check=None) -> dict:
    error = None
    for attempt in range(self.retries + 1):
      try:
        answer = _request(self.base + path, data)
        if 'error' in answer:
          raise ValueError(answer['error'])
        if check is not None:
          check(answer)
        return answer
      except (OSError, ValueError, KeyError, TypeError, urllib.error.URLError) as e:
        error = e
        if attempt < self.retries:
          time.sleep(self.backoff)
    raise RemoteError(f'latency server {self.address} gave no measurement after '
                      f'{self.retries + 1} tries ({type(error).__name__}: {error}); start '
                      f'`python -m mcj.latency_server --port {self.address.rsplit(":", 1)[1]}` '
                      'there and rerun the search to resume.')

  def info(self) -> dict:
    if self._info is None:
      self._info = self._call('/info', check=lambda a: (a['platform'], a['device']))
    return self._info

  def measure(self, model, variables, image_shape, *, batch_size=1, warmup=3, runs=20) -> dict:
    platform = self.info()['platform']
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    x = jax.ShapeDtypeStruct((batch_size,) + tuple(image_shape), jnp.float32)
    specs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), variables)
    program = jax.export.export(forward, platforms=[platform])(specs, x).serialize()
    query = urllib.parse.urlencode({'warmup': warmup, 'runs': runs})

    def check(answer):
      if not (isinstance(answer['median_ms'], (int, float)) and answer['median_ms'] > 0
              and len(answer['runs_ms']) == runs):
        raise ValueError(f'not a measurement: {str(answer)[:80]}')

    return self._call(f'/measure?{query}', bytes(program), check=check)


# ------------------------------------------------------------------------------- server
def measure_program(serialized: bytes, *, warmup: int, runs: int) -> dict:
  """Times a serialized ``jax.export`` program on this machine's first device."""
  exported = jax.export.deserialize(bytearray(serialized))
  args = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype),
                      jax.tree.unflatten(exported.in_tree, exported.in_avals))
  call = jax.jit(exported.call)
  times = latency.time_call(lambda a: call(*a[0], **a[1]), (args,), warmup=warmup,
                            runs=runs) * 1e3
  q1, median, q3 = np.percentile(times, [25, 50, 75])
  return {'median_ms': float(median), 'iqr_ms': float(q3 - q1), 'runs_ms': times.tolist(),
          'device': jax.devices()[0].device_kind}


class _Handler(http.server.BaseHTTPRequestHandler):
  def _answer(self, code: int, payload: dict):
    body = json.dumps(payload).encode()
    self.send_response(code)
    self.send_header('Content-Type', 'application/json')
    self.send_header('Content-Length', str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  def do_GET(self):  # noqa: N802  (http.server's name)
    if self.path.startswith('/info'):
      device = jax.devices()[0]
      self._answer(200, {'platform': device.platform, 'device': device.device_kind})
    else:
      self._answer(404, {'error': f'unknown path {self.path}'})

  def do_POST(self):  # noqa: N802
    url = urllib.parse.urlparse(self.path)
    if url.path != '/measure':
      self._answer(404, {'error': f'unknown path {url.path}'})
      return
    query = urllib.parse.parse_qs(url.query)
    try:
      warmup, runs = int(query.get('warmup', ['3'])[0]), int(query.get('runs', ['20'])[0])
      body = self.rfile.read(int(self.headers.get('Content-Length', 0)))
      self._answer(200, measure_program(body, warmup=warmup, runs=runs))
    except Exception as e:  # pylint: disable=broad-except  (answered, the server lives on)
      self._answer(400, {'error': f'{type(e).__name__}: {e}'})

  def log_message(self, fmt, *args):  # one line per request, on stderr
    super().log_message(fmt, *args)


def serve(port: int, host: str = '0.0.0.0') -> None:
  """Serves measurements until killed (one at a time: timings must not overlap)."""
  server = http.server.HTTPServer((host, port), _Handler)
  device = jax.devices()[0]
  print(f'mcj.latency_server: measuring on {device.device_kind} ({device.platform}) at '
        f'{host}:{server.server_port}', flush=True)
  try:
    server.serve_forever()
  finally:
    server.server_close()
