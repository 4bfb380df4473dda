"""The task losses every layer above shares: the trainer's steps, head importance, search
proxies. Per example, in float32."""
import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits, labels, num_classes, label_smoothing=0.0):
  """Per-example softmax cross-entropy with optional label smoothing (Szegedy et al. 2016)."""
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def task_loss(logits, labels, num_classes, label_smoothing=0.0):
  """Per-example loss of the task: cross-entropy of class ids, or for a one-output
  regression task (glue/stsb: float labels) the squared error of the output, as BERT's
  and Hugging Face's regression heads train."""
  if num_classes == 1:
    return jnp.square(logits[:, 0].astype(jnp.float32) - labels.astype(jnp.float32))
  return cross_entropy(logits, labels, num_classes, label_smoothing)
