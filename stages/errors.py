"""The one error stages raise on purpose.

`stages` stands alone (pandas and numpy only), so its error is its own: the toolkit counts
it among the errors written for the person running the job (`etl.core.errors.USER_ERRORS`),
prints it as one line and never retries it.
"""

from __future__ import annotations


class StageError(ValueError):
    """A cleaning stage was configured wrongly (an unknown column, a bad option) or cannot
    run on its input; the message names the stage and what to change."""
