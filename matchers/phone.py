"""Matching mode `phone`: the profile's phones or its SMS subscriptions."""
from dbimport.api import PHONE, IdentityMatcher

plugin = IdentityMatcher(name="phone", identity=PHONE, description=(
    "the profile's phones or an SMS subscription (resource_id narrows the subscriptions)"))
