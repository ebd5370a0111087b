"""The protocol's rules and state, in plain Python: no Twisted, no Autobahn."""
