"""Op-level MAC counting: every ``conv_general_dilated`` and ``dot_general`` of a traced
forward pass, with the precision of both operands and the module each op belongs to.

Why at the level of operations: a module-level count (one conv or dense per module that
owns a ``kernel``) misses products no parametrised layer owns (a constant blur-pool kernel,
attention's Q.K^T and A.V) and has to trust a layer's quantizer attributes for the
precision of its operands. The jaxpr holds every multiply-accumulate the model does, and the
quantizers leave their mark in it: they run inside ``jax.named_scope('quantized_{bits}bit')``
(``mcj.quant.quantizers.PRECISION_SCOPE``), which the eqns' name stacks keep.

``count_ops(closed_jaxpr)`` walks the jaxpr (and every nested one) once, carrying per value
a bit width and whether it is *frozen* (derived only from constants), and returns one ``Op``
per conv / dot. ``module_path(name_stack, known)`` maps an op's name stack to the module
that owns it.
"""
import dataclasses
import math
import re

from jax.extend import core as jex_core

FULL = 32  # bits of an unquantized value
_SCOPE = re.compile(r'^quantized_(\d+)bit$')  # quantizers.PRECISION_SCOPE as a pattern

# Ops that move or re-type values without computing new ones: their output has the bits of
# their (first) input (the value padded by ``pad`` is operand 0); ``concatenate`` takes the
# widest of its inputs.
_LAYOUT = {'convert_element_type', 'reshape', 'broadcast_in_dim', 'transpose', 'squeeze',
           'expand_dims', 'slice', 'rev', 'copy', 'pad', 'reduce_precision',
           'optimization_barrier'}
# Ops that keep a quantized value quantized when the other operands only rescale or mask it:
# sign(W) x per-channel scale, ``where(W == 0, 0, q(W))``, -q(x).
_KEEP_MAX = {'mul', 'select_n', 'neg'}


@dataclasses.dataclass
class Op:
  """One conv or dot: its MACs per traced call, operand bits, and where it comes from."""
  kind: str               # 'conv' or 'dot'
  name_stack: str         # e.g. 'QuickNet/section0_block0_conv'
  macs: int
  lhs_bits: int
  rhs_bits: int
  out_shape: tuple
  frozen_operands: tuple  # sizes of the operands derived only from constants (frozen weights)

  @property
  def precision(self) -> int:
    return max(self.lhs_bits, self.rhs_bits)


@dataclasses.dataclass
class _Value:
  bits: int = FULL
  frozen: bool = False
  broadcast: bool = False  # the output of a broadcast_in_dim from fewer elements


_LITERAL = _Value(FULL, True, True)


def conv_macs(eqn) -> int:
  """Output elements x (rhs elements / output features) = out x Cin/groups x kh x kw."""
  out = eqn.outvars[0].aval
  rhs = eqn.invars[1].aval
  rhs_out_dim = eqn.params['dimension_numbers'].rhs_spec[0]
  return math.prod(out.shape) * (math.prod(rhs.shape) // rhs.shape[rhs_out_dim])


def dot_macs(eqn) -> int:
  """Output elements x the product of the contracting dims."""
  (lhs_contract, _), _ = eqn.params['dimension_numbers']
  lhs = eqn.invars[0].aval
  return math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs.shape[d] for d in lhs_contract)


_MACS = {'conv_general_dilated': ('conv', conv_macs), 'dot_general': ('dot', dot_macs)}


def _scope_bits(stack: str):
  """Bits of the innermost ``quantized_{bits}bit`` scope in ``stack``, or None."""
  bits = None
  for part in stack.split('/'):
    m = _SCOPE.match(part)
    if m:
      bits = int(m.group(1))
  return bits


def _join(prefix: str, stack: str) -> str:
  # Name stacks inside a nested jaxpr are relative to the eqn that holds it.
  return f'{prefix}/{stack}' if prefix and stack else prefix or stack


def _size(aval) -> int:
  return math.prod(getattr(aval, 'shape', ()))


def _is_bool(aval) -> bool:
  return str(getattr(aval, 'dtype', '')) == 'bool'


def _sub_jaxprs(eqn):
  """(param name, jaxpr, consts) for every jaxpr an eqn holds (jit, custom_jvp/vjp, remat,
  cond branches, while / scan bodies)."""
  for key, value in eqn.params.items():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(item, jex_core.ClosedJaxpr):
        yield key, item.jaxpr, item.consts
      elif isinstance(item, jex_core.Jaxpr):
        yield key, item, ()


class _Walker:

  def __init__(self):
    self.ops: list[Op] = []

  def walk(self, jaxpr, in_values, prefix: str, multiplier: int):
    """Walks ``jaxpr`` with ``in_values`` for its invars; returns the outvars' values."""
    env = {}
    for v in jaxpr.constvars:  # constants: frozen
      env[v] = _Value(FULL, True)
    for v, value in zip(jaxpr.invars, in_values):
      env[v] = value

    def read(atom):
      if isinstance(atom, jex_core.Literal):
        return _LITERAL
      return env.get(atom, _Value())

    for eqn in jaxpr.eqns:
      stack = _join(prefix, str(eqn.source_info.name_stack))
      ins = [read(a) for a in eqn.invars]
      frozen = all(v.frozen for v in ins)
      name = eqn.primitive.name
      subs = list(_sub_jaxprs(eqn))
      out_bits = None
      if name in _MACS:
        kind, macs = _MACS[name]
        self.ops.append(Op(
            kind, stack, macs(eqn) * multiplier, ins[0].bits, ins[1].bits,
            tuple(eqn.outvars[0].aval.shape),
            tuple(_size(a.aval) for a, v in zip(eqn.invars[:2], ins[:2]) if v.frozen)))
      elif subs:
        out_bits = self._nested(eqn, subs, ins, stack, multiplier)
      scoped = _scope_bits(stack)
      for i, out in enumerate(eqn.outvars):
        if scoped is not None:
          bits = scoped
        elif out_bits is not None and i < len(out_bits):
          bits = out_bits[i]
        else:
          bits = _forward_bits(name, eqn, ins)
        broadcast = name == 'broadcast_in_dim' and _size(eqn.invars[0].aval) < _size(out.aval)
        env[out] = _Value(bits, frozen, broadcast)
    return [read(a) for a in jaxpr.outvars]

  def _nested(self, eqn, subs, ins, stack, multiplier):
    """Recurses into an eqn's jaxprs; returns the bits of the eqn's outputs (or None).

    Inner invars line up with the eqn's last operands (while / cond take leading consts or
    an index). A loop body counts ``length`` times for scan and once for while (the trip
    count is not known); of cond's branches the one with the most MACs counts."""
    inner_mult = multiplier * int(eqn.params.get('length', 1) or 1)
    out_bits, best = None, None
    for key, jaxpr, consts in subs:
      n = len(jaxpr.invars)
      in_values = ins[len(ins) - n:] if n <= len(ins) else ins + [_Value()] * (n - len(ins))
      walker = _Walker()
      outs = walker.walk(jaxpr, in_values, stack, inner_mult)
      if key == 'branches':
        if best is None or sum(o.macs for o in walker.ops) > sum(o.macs for o in best):
          best = walker.ops
      else:
        self.ops.extend(walker.ops)
      if key != 'cond_jaxpr' and len(outs) == len(eqn.outvars):
        bits = [o.bits for o in outs]
        out_bits = bits if out_bits is None else [max(a, b) for a, b in zip(out_bits, bits)]
    if best is not None:
      self.ops.extend(best)
    return out_bits


def _forward_bits(name, eqn, ins) -> int:
  """Bits of the output of an eqn outside any quantizer scope."""
  if name in _LAYOUT:
    return ins[0].bits if ins else FULL
  if name == 'concatenate':
    return max(v.bits for v in ins)
  if name in _KEEP_MAX:
    # Operands that only rescale or mask (booleans, literals, broadcasts of smaller values,
    # or operands with fewer elements than the output) do not widen the result.
    out_size = _size(eqn.outvars[0].aval)
    real = [v.bits for a, v in zip(eqn.invars, ins)
            if not _is_bool(a.aval) and not isinstance(a, jex_core.Literal)
            and not v.broadcast and _size(a.aval) == out_size]
    if not real:
      real = [v.bits for a, v in zip(eqn.invars, ins) if not _is_bool(a.aval)]
    return max(real) if real else FULL
  return FULL


def count_ops(closed_jaxpr) -> list[Op]:
  """Every conv / dot of ``closed_jaxpr`` (nested jaxprs included), in program order."""
  walker = _Walker()
  walker.walk(closed_jaxpr.jaxpr, [_Value() for _ in closed_jaxpr.jaxpr.invars], '', 1)
  return walker.ops


def module_path(name_stack: str, known) -> tuple:
  """The module path of an op: its name stack without the root class (the first component),
  method scopes ('Parent.method' right after 'Parent'), quantizer scopes and other named
  scopes, cut to the deepest module in ``known`` (a set of path tuples)."""
  parts = name_stack.split('/')[1:] if name_stack else []
  path, prev = (), None
  for part in parts:
    if prev is not None and part.startswith(prev + '.'):
      continue  # a method scope of the module just entered
    if _SCOPE.match(part):
      continue
    if path + (part,) in known:
      path = path + (part,)
      prev = part
  return path
