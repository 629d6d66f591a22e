"""Matching mode `email`: the profile's e-mail or its e-mail subscriptions."""
from dbimport.api import EMAIL, IdentityMatcher

plugin = IdentityMatcher(name="email", identity=EMAIL, description=(
    "the profile's email or an e-mail subscription (resource_id narrows the subscriptions)"))
