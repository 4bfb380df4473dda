"""Text to BERT token ids: a WordPiece tokenizer and an offline WordPiece vocab trainer.

Text datasets (``rotten_tomatoes``, ``glue/*``) yield ``{'image': int32 token ids of
shape (B, max_length), 'label': int32}``: ``'image'`` is the key every mcj model input
uses, and for text it holds token ids. Each row is ``[CLS] a [SEP]`` or
``[CLS] a [SEP] b [SEP]`` padded with ``[PAD]`` (id 0) to ``max_length``; a model derives
its attention mask (id != 0) and token types (0 through the first ``[SEP]``, 1 after) from
that layout, so the special tokens have BERT's ids: ``[PAD]`` 0, ``[UNK]`` 100, ``[CLS]``
101, ``[SEP]`` 102, ``[MASK]`` 103. Every vocab used here is checked to have them there.

``WordPieceTokenizer`` gives the ids of Hugging Face's ``BertTokenizer`` (uncased by
default) for the same ``vocab.txt`` (one token per line, id = line number, trailing
whitespace ignored; a token listed twice takes its last line), checked against ids that
tokenizer produced (``tests/fixtures/wordpiece``):

1. the special token strings (``[PAD]``, ``[UNK]``, ``[CLS]``, ``[SEP]``, ``[MASK]``,
   exactly so written) are cut out of the raw text and become their ids;
2. cleanup: NUL, U+FFFD and control / format characters (Unicode category C*, except
   tab, newline and carriage return) are dropped, whitespace becomes a space, and every
   CJK ideograph is surrounded by spaces;
3. uncased: canonical decomposition (NFD), combining marks (Mn) dropped, then each
   character lowercased on its own (no context rules such as Greek final sigma);
4. split on whitespace, then every punctuation character (ASCII punctuation and symbols,
   Unicode P*) becomes a word of its own;
5. WordPiece per word: greedy longest match first from the left, pieces after the first
   written with a ``##`` prefix; a word with no match at some position, or longer than
   100 characters, is one ``[UNK]``.

Pairs are truncated to ``max_length`` as the Hugging Face tokenizer's ``longest_first``
does: with ``n = max_length - 3`` tokens for both texts, nothing is cut if they fit; if
the shorter one has at most ``n / 2`` tokens only the longer is cut (to
``n - len(shorter)``); otherwise both are cut, the first to ``n // 2`` and the second to
``n - n // 2`` tokens when the first is not the longer, the other way round when it is.
A single text is cut to ``max_length - 2``.

``train_vocab`` learns a vocab from training text alone, deterministically (no download):
the same cleanup and splitting (1-4) give the words and their counts; the alphabet is
every character seen at the start of a word and, as ``##c``, every character seen inside
one (ordered by count, then string order; cut to vocab_size if need be); then, as in
byte-pair encoding (Sennrich et al. 2016), the most frequent adjacent pair of pieces
within words (counted over word occurrences; ties go to the smallest pair in string order)
is merged into a new piece (``a`` + ``##b`` -> ``ab``, ``##a`` + ``##b`` -> ``##ab``),
again and again, until the vocab has ``vocab_size`` tokens or no pair occurs
``min_frequency`` (2) times. Words over 100 characters are left out. The file starts with
BERT's layout: ``[PAD]``, ``[unused0]`` .. ``[unused98]``, ``[UNK]``, ``[CLS]``,
``[SEP]``, ``[MASK]`` (ids 0-103), then the alphabet, then the merged pieces in the order
they were learned, so a smaller vocab_size gives a prefix of the same list. With such a
vocab a word is [UNK] only if one of its characters was never seen in that position (first
or inside a word).
"""
import collections
import functools
import heapq
import os
import re
import unicodedata
from typing import Iterable, Sequence

import numpy as np

from mcj.core.config import ConfigError

PAD, UNK, CLS, SEP, MASK = '[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 100, 101, 102, 103
SPECIAL_IDS = {PAD: PAD_ID, UNK: UNK_ID, CLS: CLS_ID, SEP: SEP_ID, MASK: MASK_ID}
NUM_RESERVED = 104  # ids 0..103: [PAD], [unused0..98], [UNK], [CLS], [SEP], [MASK]
MAX_CHARS_PER_WORD = 100
CONTINUATION = '##'
DEFAULT_VOCAB_SIZE = 8000
MIN_PAIR_FREQUENCY = 2

_SPECIAL_SPLIT = re.compile('(' + '|'.join(re.escape(t) for t in SPECIAL_IDS) + ')')
_ASCII_PUNCT = '!-/:-@\\[-`{-~'  # character-class ranges: 33-47, 58-64, 91-96, 123-126
_ASCII_WORDS = re.compile(f'[^\\s{_ASCII_PUNCT}]+|[{_ASCII_PUNCT}]')
# ASCII cleanup: controls dropped, tab / newline / carriage return -> space.
_ASCII_CLEAN = {c: None for c in list(range(32)) + [127]}
_ASCII_CLEAN.update({ord('\t'): ' ', ord('\n'): ' ', ord('\r'): ' '})
_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
               (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))
_DROP, _SPACE, _CJK, _KEEP = range(4)
# Unicode's White_Space characters: what a vocab line's end loses.
_WHITE_SPACE = ('\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006'
                '\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000')


def reserved_tokens() -> list[str]:
  """The first 104 lines of a BERT vocab: ids 0..103."""
  return [PAD] + [f'[unused{i}]' for i in range(99)] + [UNK, CLS, SEP, MASK]


# -- basic tokenization (cleanup, case, splitting) ---------------------------------------

@functools.lru_cache(maxsize=None)
def _cleanup_kind(char: str) -> int:
  """What cleanup does with one character of the raw text."""
  if char in '\t\n\r':
    return _SPACE
  cp = ord(char)
  if cp == 0 or cp == 0xFFFD or unicodedata.category(char).startswith('C'):
    return _DROP
  if char == ' ' or unicodedata.category(char) == 'Zs':
    return _SPACE
  if any(lo <= cp <= hi for lo, hi in _CJK_RANGES):
    return _CJK
  return _KEEP


@functools.lru_cache(maxsize=None)
def _is_punctuation(char: str) -> bool:
  cp = ord(char)
  if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
    return True
  return unicodedata.category(char).startswith('P')


def _clean(text: str) -> str:
  out = []
  for char in text:
    kind = _cleanup_kind(char)
    if kind == _KEEP:
      out.append(char)
    elif kind == _SPACE:
      out.append(' ')
    elif kind == _CJK:
      out.append(f' {char} ')
  return ''.join(out)


def _uncase(text: str) -> str:
  """NFD, combining marks dropped, then each character lowercased on its own."""
  text = unicodedata.normalize('NFD', text)
  return ''.join(c.lower() for c in text if unicodedata.category(c) != 'Mn')


def _split_punctuation(word: str) -> list[str]:
  if not any(_is_punctuation(c) for c in word):
    return [word]
  pieces, current = [], []
  for char in word:
    if _is_punctuation(char):
      if current:
        pieces.append(''.join(current))
        current = []
      pieces.append(char)
    else:
      current.append(char)
  if current:
    pieces.append(''.join(current))
  return pieces


def _words(segment: str, lowercase: bool) -> list[str]:
  """Steps 2-4 of the module docstring on text holding no special token."""
  if segment.isascii():
    segment = segment.translate(_ASCII_CLEAN)
    return _ASCII_WORDS.findall(segment.lower() if lowercase else segment)
  text = _clean(segment)
  if lowercase:
    text = _uncase(text)
  words = []
  for word in text.split():
    words.extend(_split_punctuation(word))
  return words


def basic_tokenize(text: str, lowercase: bool = True) -> list[str]:
  """The words of ``text`` before WordPiece: special token strings are kept whole."""
  out = []
  for i, segment in enumerate(_SPECIAL_SPLIT.split(text)):
    if i % 2:
      out.append(segment)
    elif segment:
      out.extend(_words(segment, lowercase))
  return out


# -- the tokenizer -----------------------------------------------------------------------

def read_vocab(path: str) -> list[str]:
  """The tokens of a ``vocab.txt``: its lines (split at newlines) with trailing whitespace
  removed, as Hugging Face's tokenizers library reads the file."""
  try:
    with open(path, 'rb') as f:
      content = f.read().decode('utf-8')
  except FileNotFoundError:
    raise ConfigError(f'Vocab file {path} does not exist: set config.data.vocab_file to a '
                      'BERT vocab.txt (one token per line).') from None
  except UnicodeDecodeError as e:
    raise ConfigError(f'Vocab file {path} is not UTF-8 text ({e.reason} at byte '
                      f'{e.start}): give a BERT vocab.txt.') from None
  lines = content.split('\n')
  if lines and not lines[-1]:
    lines.pop()  # the newline ending the last line
  return [line.rstrip(_WHITE_SPACE) for line in lines]


def write_vocab(tokens: Sequence[str], path: str) -> None:
  with open(path, 'w', encoding='utf-8', newline='\n') as f:
    f.writelines(f'{t}\n' for t in tokens)


class WordPieceTokenizer:
  """BERT's WordPiece tokenization of text to ids (see the module docstring).

  ``tokens`` are a vocab's lines (id = position; a repeated token takes its last
  position). ``lowercase`` (default True) also strips accents, as uncased BERT does.
  """

  def __init__(self, tokens: Sequence[str], *, lowercase: bool = True, name: str = 'vocab'):
    self.tokens = list(tokens)
    self.vocab = {token: i for i, token in enumerate(self.tokens)}
    wrong = [f'{t} at id {self.vocab.get(t)}' for t, i in SPECIAL_IDS.items()
             if self.vocab.get(t) != i]
    if wrong:
      raise ConfigError(
          f'The {name} does not have BERT\'s special-token ids ([PAD] 0, [UNK] 100, [CLS] '
          f'101, [SEP] 102, [MASK] 103); it has {", ".join(wrong)}: use a BERT vocab.txt '
          'or one written by mcj.data.text.train_vocab.')
    self.lowercase = lowercase
    self._longest = max(len(t) for t in self.tokens)
    self._cache: dict[str, tuple] = {}

  @classmethod
  def from_file(cls, path: str, **kwargs) -> 'WordPieceTokenizer':
    return cls(read_vocab(path), name=f'vocab file {path}', **kwargs)

  @property
  def vocab_size(self) -> int:
    """Rows a model's embedding table needs: every id is below it."""
    return len(self.tokens)

  def _word_ids(self, word: str) -> tuple:
    ids = self._cache.get(word)
    if ids is not None:
      return ids
    if word in SPECIAL_IDS:  # cut out of the text whole (basic_tokenize)
      ids = (SPECIAL_IDS[word],)
    elif len(word) > MAX_CHARS_PER_WORD:
      ids = (UNK_ID,)
    else:
      ids, start, n = [], 0, len(word)
      while start < n:
        end = min(n, start + self._longest)
        while end > start:
          piece = word[start:end] if start == 0 else CONTINUATION + word[start:end]
          found = self.vocab.get(piece)
          if found is not None:
            break
          end -= 1
        if end == start:
          ids = [UNK_ID]
          break
        ids.append(found)
        start = end
      ids = tuple(ids)
    self._cache[word] = ids
    return ids

  def ids(self, text: str) -> list[int]:
    """The WordPiece ids of ``text``, without [CLS] / [SEP]."""
    out = []
    for word in basic_tokenize(text, self.lowercase):
      out.extend(self._word_ids(word))
    return out

  def tokenize(self, text: str) -> list[str]:
    """The WordPiece tokens of ``text`` (``[UNK]`` for unknown words)."""
    return [self.tokens[i] if i != UNK_ID else UNK for i in self.ids(text)]

  def encode(self, text: str, pair: str | None = None, max_length: int | None = None
             ) -> list[int]:
    """``[CLS] text [SEP]`` or ``[CLS] text [SEP] pair [SEP]``, truncated to
    ``max_length`` (if given) as the module docstring says; not padded."""
    first = self.ids(text)
    second = None if pair is None else self.ids(pair)
    if max_length is not None:
      first, second = truncate(first, second, max_length)
    if second is None:
      return [CLS_ID] + first + [SEP_ID]
    return [CLS_ID] + first + [SEP_ID] + second + [SEP_ID]

  def encode_batch(self, texts: Sequence[str], pairs: Sequence[str] | None = None, *,
                   max_length: int) -> np.ndarray:
    """int32 ``(len(texts), max_length)``: each encoded, truncated and padded with 0."""
    out = np.zeros((len(texts), max_length), np.int32)
    if pairs is not None and len(pairs) != len(texts):
      raise ValueError(f'{len(texts)} texts but {len(pairs)} pairs.')
    for row, text in enumerate(texts):
      ids = self.encode(text, None if pairs is None else pairs[row], max_length)
      out[row, :len(ids)] = ids
    return out


def truncate(first: list, second: list | None, max_length: int) -> tuple:
  """Cuts ids so that they fit ``max_length`` with [CLS] and [SEP]s ('longest_first')."""
  if second is None:
    if max_length < 2:
      raise ConfigError(f'config.data.max_length must be at least 2 ([CLS] and [SEP]), '
                        f'got {max_length}.')
    return first[:max_length - 2], None
  if max_length < 3:
    raise ConfigError(f'config.data.max_length must be at least 3 for text pairs ([CLS] '
                      f'and two [SEP]), got {max_length}.')
  budget = max_length - 3
  n1, n2 = len(first), len(second)
  if n1 + n2 <= budget:
    return first, second
  short, long_ = min(n1, n2), max(n1, n2)
  if short > budget:
    long_ = short
  else:
    long_ = max(short, budget - short)
  if short + long_ > budget:
    short = budget // 2
    long_ = budget - short
  keep1, keep2 = (long_, short) if n1 > n2 else (short, long_)
  return first[:keep1], second[:keep2]


# -- the vocab trainer -------------------------------------------------------------------

def word_counts(texts: Iterable[str], lowercase: bool = True) -> collections.Counter:
  """How often each word (steps 1-4) occurs; special token strings are left out."""
  counts = collections.Counter()
  for text in texts:
    for i, segment in enumerate(_SPECIAL_SPLIT.split(text)):
      if i % 2 == 0 and segment:
        counts.update(_words(segment, lowercase))
  return counts


def _pairs(symbols):
  return zip(symbols, symbols[1:])


def _merge_word(symbols: tuple, a: str, b: str, merged: str) -> tuple:
  out, i, n = [], 0, len(symbols)
  while i < n:
    if i + 1 < n and symbols[i] == a and symbols[i + 1] == b:
      out.append(merged)
      i += 2
    else:
      out.append(symbols[i])
      i += 1
  return tuple(out)


def train_vocab(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE, *,
                lowercase: bool = True, min_frequency: int = MIN_PAIR_FREQUENCY
                ) -> list[str]:
  """A WordPiece vocab (the lines of a vocab.txt) learned from ``texts`` as the module
  docstring says: at most ``vocab_size`` tokens, ids 0..103 BERT's."""
  if not isinstance(vocab_size, int) or vocab_size <= NUM_RESERVED:
    raise ConfigError(f'config.data.vocab_size must be an integer above {NUM_RESERVED} '
                      f'(BERT\'s reserved ids 0..{NUM_RESERVED - 1}), got {vocab_size!r}.')
  counts = sorted((w, c) for w, c in word_counts(texts, lowercase).items()
                  if len(w) <= MAX_CHARS_PER_WORD)
  words = [(w[0],) + tuple(CONTINUATION + c for c in w[1:]) for w, _ in counts]
  freqs = [c for _, c in counts]

  alphabet = collections.Counter()
  for symbols, freq in zip(words, freqs):
    for s in symbols:
      alphabet[s] += freq
  tokens = reserved_tokens()
  order = sorted(alphabet, key=lambda s: (-alphabet[s], s))
  tokens += order[:vocab_size - len(tokens)]
  known = set(tokens)

  pair_counts = collections.Counter()
  where = collections.defaultdict(set)
  for index, (symbols, freq) in enumerate(zip(words, freqs)):
    for pair in _pairs(symbols):
      pair_counts[pair] += freq
      where[pair].add(index)
  # Heap entries are upper bounds of their pair's count (a decrease is re-pushed when its
  # stale entry surfaces); an entry equal to the current count is the most frequent pair.
  # A word listed under a pair it no longer holds is skipped when that pair is merged.
  heap = [(-c, pair) for pair, c in pair_counts.items()]
  heapq.heapify(heap)
  while len(tokens) < vocab_size and heap:
    negative, pair = heapq.heappop(heap)
    count = pair_counts.get(pair, 0)
    if count != -negative:
      if count > 0:
        heapq.heappush(heap, (-count, pair))
      continue
    if count < min_frequency:
      break
    a, b = pair
    merged = a + b[len(CONTINUATION):]
    if merged not in known:
      tokens.append(merged)
      known.add(merged)
    increased = set()
    for index in where.pop(pair):
      old = words[index]
      new = _merge_word(old, a, b, merged)
      if len(new) == len(old):
        continue
      delta = {}
      for p in _pairs(old):
        delta[p] = delta.get(p, 0) - 1
      for p in _pairs(new):
        delta[p] = delta.get(p, 0) + 1
      freq = freqs[index]
      for p, d in delta.items():
        if d:
          pair_counts[p] += d * freq
          if d > 0:
            where[p].add(index)
            increased.add(p)
      words[index] = new
    del pair_counts[pair]
    for p in increased:
      heapq.heappush(heap, (-pair_counts[p], p))
  return tokens


# -- the `data` block's text keys --------------------------------------------------------

def max_length(data_config, default: int) -> int:
  value = data_config.get('max_length', None) or default
  if not isinstance(value, int) or value < 3:
    raise ConfigError(f'config.data.max_length must be an integer of at least 3 ([CLS], '
                      f'[SEP] and a token), got {value!r}.')
  return value


def vocab_size(data_config) -> int:
  return data_config.get('vocab_size', None) or DEFAULT_VOCAB_SIZE


def vocab_file(data_config) -> str | None:
  path = data_config.get('vocab_file', None)
  if path is None:
    return None
  path = os.path.expanduser(str(path))
  if not os.path.isfile(path):
    raise ConfigError(f'config.data.vocab_file={path} is not a file: give a BERT vocab.txt '
                      '(one token per line), or unset it to learn one from the training '
                      'split.')
  return path
