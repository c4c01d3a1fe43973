"""What a person reads after a moderation job: the review queue and the HTML report."""

from .html import write_report
from .review import write_review_queue

__all__ = ["write_report", "write_review_queue"]
