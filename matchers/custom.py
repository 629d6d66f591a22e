"""Matching mode `custom`: a declared custom field of the database."""
from dbimport.api import FieldMatcher

plugin = FieldMatcher(
    name="custom", description="a declared custom field of the database (tags: the profile holds all given tags)")
