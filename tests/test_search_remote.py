"""Remote latency measurement over loopback: a real server process, a killed one, one that
answers garbage, and a search that stops with one line and resumes when the server is back."""
import http.server
import json
import socket
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest

from helpers import ROOT, cpu_env
from mcj import search as search_lib
from mcj.models import get_model
from mcj.search import remote, runner


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start_server(port):
  proc = subprocess.Popen([sys.executable, '-m', 'mcj.latency_server', '--port', str(port),
                           '--host', '127.0.0.1'], env=cpu_env(), cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  line = proc.stdout.readline()  # the server prints one line once it listens
  assert 'measuring on' in line, line
  return proc


def _model():
  model = get_model('nb201', 10, channels=2, cells_per_stage=1,
                    ops=['nor_conv_3x3', 'skip_connect', 'none', 'avg_pool_3x3', 'none',
                         'nor_conv_1x1'])
  variables = jax.jit(lambda r: model.init(r, np.zeros((1, 8, 8, 3), np.float32)))(
      jax.random.key(0))
  return model, variables


@pytest.mark.slow
def test_measure_over_loopback_then_a_killed_server_then_it_returns(tmp_path):
  port = _free_port()
  server = _start_server(port)
  model, variables = _model()
  client = remote.RemoteLatency(f'127.0.0.1:{port}', retries=1, backoff=0.1)
  try:
    assert client.info()['platform'] == 'cpu'
    out = client.measure(model, variables, (8, 8, 3), warmup=1, runs=4)
    assert len(out['runs_ms']) == 4 and out['median_ms'] > 0
    assert out['device'] == jax.devices()[0].device_kind
  finally:
    server.kill()
    server.wait()
  with pytest.raises(remote.RemoteError, match=rf'latency server 127.0.0.1:{port} gave no '
                     r'measurement after 2 tries.*mcj.latency_server --port'):
    client.measure(model, variables, (8, 8, 3), warmup=1, runs=4)
  # A search with the server down stops with one line (rc 1) and records nothing; with the
  # server back, the same command resumes and finishes.
  config = tmp_path / 'search.py'
  config.write_text(
      'def get_config(arg=None):\n'
      '  return {"space": "nb201(channels=2, cells_per_stage=1)", "evaluators": '
      f'("latency(remote=\'127.0.0.1:{port}\', runs=3, warmup=1, throughput_batch=0, '
      'retries=1)",), "objectives": ("latency_ms:min",), "budget": {"evaluations": 2}, '
      '"train": {"data": {"name": "digits"}}}\n')
  command = [sys.executable, '-m', 'mcj.search', '--config', str(config), '--workdir',
             str(tmp_path / 'w')]
  down = subprocess.run(command, capture_output=True, text=True, env=cpu_env(), cwd=ROOT,
                        timeout=300)
  assert down.returncode == 1, down.stderr
  assert down.stderr.strip().splitlines()[-1].startswith(
      f'mcj.search: error: latency server 127.0.0.1:{port} gave no measurement')
  assert not (tmp_path / 'w' / 'candidates.jsonl').exists()
  server = _start_server(port)
  try:
    up = subprocess.run(command, capture_output=True, text=True, env=cpu_env(), cwd=ROOT,
                        timeout=300)
  finally:
    server.kill()
    server.wait()
  assert up.returncode == 0, up.stderr
  with open(tmp_path / 'w' / 'candidates.jsonl') as f:
    records = [json.loads(line) for line in f]
  assert len(records) == 2 and all(r['metrics']['latency_ms'] > 0 for r in records)


@pytest.mark.slow
def test_a_server_answering_garbage_is_retried_then_one_clear_error():
  calls = []

  class Garbage(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
      calls.append(self.path)
      body = json.dumps({'platform': 'cpu', 'device': 'cpu'}).encode()
      self.send_response(200)
      self.send_header('Content-Length', str(len(body)))
      self.end_headers()
      self.wfile.write(body)

    def do_POST(self):  # noqa: N802
      calls.append(self.path)
      self.rfile.read(int(self.headers.get('Content-Length', 0)))
      body = b'{"median_ms": "fast"}'
      self.send_response(200)
      self.send_header('Content-Length', str(len(body)))
      self.end_headers()
      self.wfile.write(body)

    def log_message(self, *args):
      pass

  server = http.server.HTTPServer(('127.0.0.1', 0), Garbage)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    client = remote.RemoteLatency(f'127.0.0.1:{server.server_port}', retries=2, backoff=0.01)
    model, variables = _model()
    with pytest.raises(remote.RemoteError, match='after 3 tries.*not a measurement'):
      client.measure(model, variables, (8, 8, 3), warmup=1, runs=2)
    assert sum(p.startswith('/measure') for p in calls) == 3
  finally:
    server.shutdown()


def test_bad_remote_address_is_one_line(tmp_path):
  from mcj.core.config import ConfigError
  config = search_lib.merge_config({
      'space': 'nb201', 'evaluators': ('latency(remote="localhost")',),
      'objectives': ('latency_ms:min',), 'train': {'data': {'name': 'digits'}}})
  with pytest.raises(ConfigError, match="latency remote must be 'HOST:PORT'"):
    runner.Search(config, str(tmp_path), say=lambda *a: None)
