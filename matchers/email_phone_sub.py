"""Matching mode `email_phone_sub`: e-mail subscriptions, then SMS subscriptions."""
from dbimport.api import EitherIdentityMatcher

plugin = EitherIdentityMatcher(name="email_phone_sub", in_profile=False, description=(
    "e-mail subscriptions, then SMS subscriptions; both finding different profiles is 409 "
    "(a new profile is subscribed to resource_id)"))
