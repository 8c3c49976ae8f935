"""The weights catalogue: the table of weights files and where to find them (catalogue.py), model families
told by their keys (families.py), safe checkpoint reading (checkpoint.py), and what `rsvl weights` reports
(manager.py)."""
