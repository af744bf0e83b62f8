"""Choosing which objects get spectra next: cheap photometric features, TypiClust / ProbCover / margin rules, and `stellar-dist select`."""
