import haliax as hax
import jax.numpy as jnp
import numpy as np

from lm.models.lm_model import LmExample

Pos = hax.Axis("position", 6)


def test_causal_mask_excludes_last_position():
    ex = LmExample.causal(hax.named(jnp.arange(6), Pos))
    np.testing.assert_array_equal(ex.loss_mask.array, [True] * 5 + [False])
    assert ex.loss_mask.array.dtype == jnp.bool_


def test_segments_block_cross_document_targets_and_padding():
    tokens = hax.named(jnp.arange(6), Pos)
    seg = hax.named(jnp.array([0, 0, 0, 1, 1, -1]), Pos)
    ex = LmExample.causal(tokens, segment_ids=seg)
    np.testing.assert_array_equal(ex.loss_mask.array, [True, True, False, True, False, False])


def test_ignore_id_masks_predictions_of_that_token():
    tokens = hax.named(jnp.array([5, 7, 0, 0, 3, 4]), Pos)
    ex = LmExample.causal(tokens, ignore_id=0)
    np.testing.assert_array_equal(ex.loss_mask.array, [True, False, False, True, True, False])


def test_batched_examples_keep_batch_axis():
    Batch = hax.Axis("batch", 2)
    tokens = hax.named(jnp.zeros((2, 6), dtype=jnp.int32), (Batch, Pos))
    ex = LmExample.causal(tokens)
    assert ex.loss_mask.axes == (Batch, Pos)
