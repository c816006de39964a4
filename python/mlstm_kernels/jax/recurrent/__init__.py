"""Recurrent mLSTM kernels (upstream import path): one step, and whole sequences.

Step: ``mlstm_recurrent_step__native`` (jax.numpy, differentiable), ``mlstm_recurrent_step__fused``
(the core, forward only; ``mlstm_recurrent_step__triton`` is upstream's name for it).
Sequence: ``mlstm_recurrent_sequence__native_fw`` (lax.scan of jax.numpy steps, differentiable),
``mlstm_recurrent_sequence__native_fused_fw`` (lax.scan of core steps),
``mlstm_recurrent_sequence__fused_fw`` (one core kernel for the whole sequence); the two core ones
are forward only. ``mlstm_recurrent_sequence__triton_step_fused_fw`` is upstream's name for the
loop of fused steps.
"""

from .._interface import (
    mlstm_recurrent_sequence__fused_fw,
    mlstm_recurrent_sequence__native_fused_fw,
    mlstm_recurrent_sequence__native_fw,
    mlstm_recurrent_step__fused,
    mlstm_recurrent_step__native,
)

mlstm_recurrent_step__triton = mlstm_recurrent_step__fused
mlstm_recurrent_sequence__triton_step_fused_fw = mlstm_recurrent_sequence__native_fused_fw

__all__ = [
    "mlstm_recurrent_step__native",
    "mlstm_recurrent_step__fused",
    "mlstm_recurrent_step__triton",
    "mlstm_recurrent_sequence__native_fw",
    "mlstm_recurrent_sequence__native_fused_fw",
    "mlstm_recurrent_sequence__fused_fw",
    "mlstm_recurrent_sequence__triton_step_fused_fw",
]
