"""The built-in matching modes, each a plugin registered like a third party's."""
