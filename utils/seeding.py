"""Seeds that depend on the epoch: one formula for the training loader and the training sampler."""

# Spreads the epochs' seeds far apart, so that (seed, epoch) pairs of nearby seeds do not collide.
EPOCH_SEED_STRIDE = 1_000_003


def epoch_seed(seed, epoch):
    """The seed of ``epoch`` for a stream seeded with ``seed`` (docs/data.md, section 11)."""
    return seed + EPOCH_SEED_STRIDE * epoch
