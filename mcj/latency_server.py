"""``python -m mcj.latency_server --port P``: measures the latency of programs a search
sends (``latency(remote='HOST:PORT')``) on this machine's first device; see
``mcj/search/remote.py``. It needs only jax and mcj."""
import argparse
import sys

from mcj.search import remote


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m mcj.latency_server', allow_abbrev=False,
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--port', type=int, required=True)
  parser.add_argument('--host', default='0.0.0.0')
  args = parser.parse_args(argv)
  try:
    remote.serve(args.port, args.host)
  except OSError as e:
    print(f'mcj.latency_server: error: cannot listen on {args.host}:{args.port} '
          f'({e.strerror or e}).', file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    return 0
  return 0


if __name__ == '__main__':
  sys.exit(main())
