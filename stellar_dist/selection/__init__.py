"""Choosing which objects get spectra next: cheap photometric features, TypiClust and margin rules, and
`stellar-dist select`."""
