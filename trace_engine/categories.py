"""The triage categories (design.md §2): the one definition the engine, the API and the workers share.

Standard library only, so the API can import it without pulling in torch.
"""

from __future__ import annotations

from enum import Enum


class Category(str, Enum):
    """What triage decided for a pair; members compare and hash equal to their strings, so JSON rows need no
    conversion."""

    INVERT = "INVERT"  # chosen violates the new policy, rejected complies: the pair is swapped
    PUNISH = "PUNISH"  # both violate: both responses are pushed down
    RETAIN = "RETAIN"  # chosen complies: the pair is kept as it is
    ERROR = "ERROR"  # a verdict is missing (the judge failed); never trained on

    def __str__(self) -> str:
        """The bare value, so f-strings and joins print `INVERT`, not `Category.INVERT`."""
        return self.value


# The categories a verdict decided: the ones a dataset row, a reviewer or a variant's loss table may carry.
CATEGORIES: tuple[Category, ...] = (Category.INVERT, Category.PUNISH, Category.RETAIN)
# The conflict set: pairs whose chosen response the new policy forbids (what impact scoring and the probes are about).
CONFLICT_CATEGORIES: tuple[Category, ...] = (Category.INVERT, Category.PUNISH)
# Every category, in the order reports list them.
CATEGORY_ORDER: tuple[Category, ...] = (*CATEGORIES, Category.ERROR)
