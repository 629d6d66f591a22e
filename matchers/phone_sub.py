"""Matching mode `phone_sub`: SMS subscriptions only."""
from dbimport.api import PHONE, IdentityMatcher

plugin = IdentityMatcher(name="phone_sub", identity=PHONE, in_profile=False, description=(
    "SMS subscriptions only (resource_id narrows them; a new profile is subscribed to it)"))
