"""Matching mode `custom_sub`: a custom field of the database's subscriptions."""
from dbimport.api import FieldMatcher

plugin = FieldMatcher(name="custom_sub", of_subscriptions=True, description=(
    "a custom field of subscriptions, declared by a resource linked to the database "
    "(resource_id narrows the search to that resource)"))
