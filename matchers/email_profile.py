"""Matching mode `email_profile`: the profile's own e-mail only."""
from dbimport.api import EMAIL, IdentityMatcher

plugin = IdentityMatcher(name="email_profile", identity=EMAIL, in_subscriptions=False,
                         description="the profile's email only")
