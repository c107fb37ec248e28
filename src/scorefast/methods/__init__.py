"""The three methods of METHODS.md, each a module that plugs into the one trainer."""
