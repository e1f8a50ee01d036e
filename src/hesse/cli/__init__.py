"""The ``hesse`` command: parsing, safe expressions and output. No math lives here."""
