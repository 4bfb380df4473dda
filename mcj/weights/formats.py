"""Checkpoint files of other libraries read as ``{name: numpy array}``, with no torch,
safetensors or Keras import.

- PyTorch (``torch.save``'s zip format, every release since 1.6: ``.pth`` / ``.pt`` /
  ``.bin``): the pickle is read by an unpickler that admits only what a state dict holds
  (tensors, parameters, ordered dicts, plain containers) and rebuilds each tensor from its
  raw storage bytes (offset, shape and strides as saved). Anything else in the pickle
  (arbitrary classes) is refused: a checkpoint file cannot run code here.
- safetensors: an 8-byte little-endian header length, a JSON header
  (``{name: {dtype, shape, data_offsets}}``) and the raw bytes.

Nested state dicts (``{'state_dict': {...}}``, ``{'model': {...}}``) are flattened with
``.`` between levels; what a converter expects is the flat torch naming.
"""
import json
import os
import pickle
import zipfile

import numpy as np

from mcj.core.config import ConfigError

# torch storage class names and safetensors dtype names -> numpy dtypes.
_TORCH_STORAGES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
    'BFloat16Storage': 'bfloat16', 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}
_TORCH_DTYPES = {'float32': np.float32, 'float': np.float32, 'float64': np.float64,
                 'double': np.float64, 'float16': np.float16, 'half': np.float16,
                 'bfloat16': 'bfloat16', 'int64': np.int64, 'long': np.int64,
                 'int32': np.int32, 'int': np.int32, 'int16': np.int16, 'int8': np.int8,
                 'uint8': np.uint8, 'bool': np.bool_}
_SAFETENSORS_DTYPES = {'F64': np.float64, 'F32': np.float32, 'F16': np.float16,
                       'BF16': 'bfloat16', 'I64': np.int64, 'I32': np.int32, 'I16': np.int16,
                       'I8': np.int8, 'U8': np.uint8, 'BOOL': np.bool_}


def _dtype(spec):
  """A numpy dtype; bfloat16 is read as its raw 16 bits and widened to float32."""
  return np.dtype(np.uint16) if spec == 'bfloat16' else np.dtype(spec)


def _array(raw: bytes, spec, shape, offset=0, strides=None) -> np.ndarray:
  dtype = _dtype(spec)
  flat = np.frombuffer(raw, dtype=dtype.newbyteorder('<'))
  if strides is None:
    out = flat[offset:offset + int(np.prod(shape, dtype=np.int64))].reshape(shape)
  else:
    out = np.lib.stride_tricks.as_strided(flat[offset:], shape=tuple(shape),
                                          strides=tuple(s * dtype.itemsize for s in strides))
  out = np.array(out)  # own, contiguous, native byte order
  if spec == 'bfloat16':
    out = (out.astype(np.uint32) << 16).view(np.float32)
  return out.astype(out.dtype.newbyteorder('='))


class _Storage:
  """A storage named in the pickle, read from the zip on first use."""

  def __init__(self, archive, prefix, key, spec):
    self.archive, self.prefix, self.key, self.spec = archive, prefix, key, spec
    self._raw = None

  def raw(self) -> bytes:
    if self._raw is None:
      self._raw = self.archive.read(f'{self.prefix}/data/{self.key}')
    return self._raw


class _StorageType:
  def __init__(self, spec):
    self.spec = spec


def _rebuild_tensor(storage, offset, size, stride, *unused):
  return _array(storage.raw(), storage.spec, tuple(size), int(offset), tuple(stride))


def _rebuild_parameter(data, *unused):
  return data


def _rebuild_from_type_v2(func, new_type, args, state):  # a tensor subclass: keep the data
  return func(*args)


class _Dict(dict):
  """An ordered dict of the pickle (torch sets a ``_metadata`` attribute on it)."""


class _StateDictUnpickler(pickle.Unpickler):
  """Rebuilds tensors as numpy arrays; refuses every class a state dict does not need."""
  _ALLOWED = {
      ('collections', 'OrderedDict'): _Dict,
      ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
      ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
      ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
      ('torch._tensor', '_rebuild_from_type_v2'): _rebuild_from_type_v2,
      ('builtins', 'set'): set, ('builtins', 'frozenset'): frozenset,
      ('builtins', 'slice'): slice,
  }

  def __init__(self, file, archive, prefix, path):
    super().__init__(file)
    self.archive, self.prefix, self.path = archive, prefix, path
    self.storages = {}

  def find_class(self, module, name):
    if (module, name) in self._ALLOWED:
      return self._ALLOWED[(module, name)]
    if module == 'torch' and name in _TORCH_STORAGES:
      return _StorageType(_TORCH_STORAGES[name])
    if module == 'torch' and name in _TORCH_DTYPES:
      return _TORCH_DTYPES[name]
    if module == 'torch' and name == 'Size':
      return tuple
    raise ConfigError(f'{self.path} holds a pickled {module}.{name}, which a state dict of '
                      'tensors does not need; mcj reads only tensors and containers (save '
                      'the model\'s state_dict()).')

  def persistent_load(self, pid):
    kind, storage_type, key, *unused = pid
    if kind != 'storage':
      raise ConfigError(f'{self.path}: unknown persistent record {kind!r} in the pickle.')
    spec = storage_type.spec if isinstance(storage_type, _StorageType) else storage_type
    if key not in self.storages:
      self.storages[key] = _Storage(self.archive, self.prefix, key, spec)
    return self.storages[key]


def read_torch(path: str) -> dict:
  """A ``torch.save`` zip file as ``{name: array}`` (see the module docstring)."""
  if not zipfile.is_zipfile(path):
    raise ConfigError(f'{path} is not a PyTorch zip checkpoint (torch.save of torch >= 1.6); '
                      're-save it with torch.save(model.state_dict(), FILE).')
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith('/data.pkl')]
    if len(pickles) != 1:
      raise ConfigError(f'{path}: expected one data.pkl in the zip, found {len(pickles)}.')
    prefix = pickles[0][:-len('/data.pkl')]
    with archive.open(pickles[0]) as f:
      tree = _StateDictUnpickler(f, archive, prefix, path).load()
  return flatten(tree, path)


def read_safetensors(path: str) -> dict:
  """A safetensors file as ``{name: array}``."""
  with open(path, 'rb') as f:
    head = f.read(8)
    if len(head) != 8:
      raise ConfigError(f'{path} is too short to be a safetensors file.')
    size = int.from_bytes(head, 'little')
    if size <= 0 or size > os.path.getsize(path) - 8:
      raise ConfigError(f'{path} is not a safetensors file (header length {size}).')
    header = json.loads(f.read(size))
    data = f.read()
  out = {}
  for name, entry in header.items():
    if name == '__metadata__':
      continue
    if entry['dtype'] not in _SAFETENSORS_DTYPES:
      raise ConfigError(f'{path}: tensor {name} has dtype {entry["dtype"]}, which mcj does not '
                        f'read (valid: {", ".join(_SAFETENSORS_DTYPES)}).')
    start, end = entry['data_offsets']
    spec = _SAFETENSORS_DTYPES[entry['dtype']]
    out[name] = _array(data[start:end], spec, tuple(entry['shape']))
  return out


def flatten(tree, path: str, prefix: str = '') -> dict:
  """Nested dicts of arrays -> ``{'a.b.c': array}``; other leaves (numbers, strings: epoch
  counters, optimizer names) are dropped."""
  out = {}
  if isinstance(tree, dict):
    for key, value in tree.items():
      out.update(flatten(value, path, f'{prefix}{key}.'))
    return out
  if isinstance(tree, np.ndarray):
    out[prefix[:-1]] = tree
  return out


def unwrap(tensors: dict) -> dict:
  """A state dict saved inside a training checkpoint (``state_dict.``, ``model.``,
  ``module.`` (DataParallel) prefixes on every name) as the bare state dict."""
  for wrapper in ('state_dict.', 'model.', 'module.', 'model_ema.', 'state_dict_ema.'):
    names = [n for n in tensors if n.startswith(wrapper)]
    if names and len(names) == len(tensors):
      return unwrap({n[len(wrapper):]: v for n, v in tensors.items()})
  return tensors


def read_keras_h5(path: str) -> dict:
  """``{'<layer>/<weight>': array}`` of a Keras HDF5 weights file (``model.save_weights``,
  larq-zoo's downloads), in the model's layer order (the file's ``layer_names``); read
  with h5py, no TensorFlow. ``':0'`` suffixes are dropped."""
  import h5py  # pylint: disable=g-import-not-at-top
  with h5py.File(path, 'r') as f:
    root = f['model_weights'] if 'model_weights' in f else f  # a whole saved model
    if 'layer_names' not in root.attrs:
      raise ConfigError(f'{path} is an HDF5 file but not Keras weights (no layer_names).')
    out = {}
    for layer in root.attrs['layer_names']:
      layer = layer.decode() if isinstance(layer, bytes) else layer
      group = root[layer]
      for weight in group.attrs.get('weight_names', ()):
        weight = weight.decode() if isinstance(weight, bytes) else weight
        name = weight.split('/')[-1].split(':')[0]
        out[f'{layer}/{name}'] = np.asarray(group[weight])
  return out


ENDINGS = ('.pth', '.pt', '.bin', '.ckpt', '.safetensors', '.h5')
_HDF5 = b'\x89HDF\r\n\x1a\n'


def read_checkpoint(path: str) -> dict:
  """``{name: array}`` of a PyTorch, safetensors or Keras HDF5 file, chosen by its
  content."""
  if not os.path.isfile(path):
    raise ConfigError(f'{path} does not exist or is not a file: give the downloaded '
                      'checkpoint file.')
  if zipfile.is_zipfile(path):
    return unwrap(read_torch(path))
  with open(path, 'rb') as f:
    head = f.read(9)
  if len(head) == 9 and head[8:9] == b'{':
    return unwrap(read_safetensors(path))
  if head[:8] == _HDF5:
    return read_keras_h5(path)
  raise ConfigError(f'{path} is neither a PyTorch zip checkpoint, a safetensors file nor '
                    f'Keras HDF5 weights (usual endings: {", ".join(ENDINGS)}).')
