"""What a person sees: figures (:mod:`.figures` for the shared style and saving, :mod:`.quantile_plots`
for a scored pool, :mod:`.run_plots` for runs), HTML tables (:mod:`.html`) and notebook widgets
(:mod:`.widgets`). The tables they draw come from :mod:`quarklab.analysis`; nothing here computes a
result it does not draw."""
