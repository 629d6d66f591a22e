"""Matching mode `email_phone`: the profile's e-mail, then its phones."""
from dbimport.api import EitherIdentityMatcher

plugin = EitherIdentityMatcher(
    name="email_phone",
    description="the profile's email, then its phones; both finding different profiles is 409",
)
