"""One way to derive seeds: a 63-bit seed from integer keys (base seed, stream, index, ...).

Every random draw in sublim that is not the base seed itself gets its seed here, so that streams
never collide (a linear mix such as ``seed * P + i`` does) and a resumed run repeats each draw.
"""

from __future__ import annotations

import numpy as np


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys; the same keys always give the same seed."""
    state = np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)
