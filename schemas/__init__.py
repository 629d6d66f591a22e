"""JSON Schemas of dbimport's inputs, shipped as package data (`dbimport.schemas`)."""
