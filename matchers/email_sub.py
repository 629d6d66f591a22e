"""Matching mode `email_sub`: e-mail subscriptions only."""
from dbimport.api import EMAIL, IdentityMatcher

plugin = IdentityMatcher(name="email_sub", identity=EMAIL, in_profile=False, description=(
    "e-mail subscriptions only (resource_id narrows them; a new profile is subscribed to it)"))
