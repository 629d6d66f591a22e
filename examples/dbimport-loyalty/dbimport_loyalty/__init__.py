"""dbimport-loyalty: the matching mode `loyalty`, finding profiles by loyalty card number."""
from __future__ import annotations

from .matcher import CARD_FIELD, LoyaltyMatcher, normalise_card

__all__ = ["CARD_FIELD", "LoyaltyMatcher", "normalise_card"]
