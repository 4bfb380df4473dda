"""Starts N processes of ``python -m mcj.train`` on this machine, as a multi-host job would.

  python launch/local.py --num_processes 2 --devices_per_process 2 -- \
      --config configs/quickstart.py --workdir /tmp/mcj/local2x2

Each process gets ``--coordinator_address localhost:PORT --num_processes N --process_id I``
and, on CPU, ``devices_per_process`` host devices. Output of process I is prefixed ``[I]``.
If one process fails, the others are stopped; the exit code is the first non-zero one.
"""
import argparse
import os
import socket
import subprocess
import sys
import threading


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _pump(index, stream, out):
  for line in iter(stream.readline, ''):
    out.write(f'[{index}] {line}')
    out.flush()


def launch(num_processes: int, train_args: list, devices_per_process: int = 1,
           module: str = 'mcj.train', env=None) -> int:
  port = free_port()
  env = dict(os.environ if env is None else env)
  # The device count is forced; XLA's CPU collectives wait out a loaded machine (by
  # default they abort an all-reduce after 40 s).
  kept = [f for f in env.get('XLA_FLAGS', '').split()
          if not f.startswith('--xla_force_host_platform_device_count')]
  if not any(f.startswith('--xla_cpu_collective') for f in kept):
    kept += ['--xla_cpu_collective_call_terminate_timeout_seconds=600',
             '--xla_cpu_collective_timeout_seconds=600']
  env['XLA_FLAGS'] = ' '.join(kept + [f'--xla_force_host_platform_device_count={devices_per_process}'])
  env.setdefault('JAX_PLATFORMS', 'cpu')
  procs, pumps = [], []
  for i in range(num_processes):
    cmd = [sys.executable, '-m', module, *train_args,
           '--coordinator_address', f'localhost:{port}',
           '--num_processes', str(num_processes), '--process_id', str(i)]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    t = threading.Thread(target=_pump, args=(i, p.stdout, sys.stdout), daemon=True)
    t.start()
    procs.append(p)
    pumps.append(t)
  code = 0
  remaining = list(procs)
  while remaining:
    for p in list(remaining):
      try:
        rc = p.wait(timeout=0.5)
      except subprocess.TimeoutExpired:
        continue
      remaining.remove(p)
      if rc and not code:
        code = rc
        for other in remaining:
          other.terminate()
  for t in pumps:
    t.join(timeout=5)
  return code


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--num_processes', type=int, default=2)
  parser.add_argument('--devices_per_process', type=int, default=1)
  parser.add_argument('--module', default='mcj.train')
  parser.add_argument('train_args', nargs=argparse.REMAINDER,
                      help='arguments for the module, after --')
  args = parser.parse_args()
  for flag in ('num_processes', 'devices_per_process'):
    if getattr(args, flag) < 1:
      parser.error(f'--{flag} must be at least 1, got {getattr(args, flag)}.')
  train_args = args.train_args[1:] if args.train_args[:1] == ['--'] else args.train_args
  sys.exit(launch(args.num_processes, train_args, args.devices_per_process, args.module))


if __name__ == '__main__':
  main()
